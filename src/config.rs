//! Configuration: built-in defaults, then a TOML file, then the environment.
//!
//! Every key can be set in the environment as `CLAWDFORGE_<KEY>`; the old Python service's
//! variable names (`DB_PATH`, `ACPX_BIN`, …) keep working as aliases. A bad value stops startup
//! with a message naming the variable (or the file) it came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The default config file, read when it exists and no other file is named.
pub const DEFAULT_CONFIG_FILE: &str = "config/clawdforge.toml";

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

    /// `text` (colours only on a terminal) or `json` (one object per line, span fields
    /// included, for log collectors).
    pub log_format: LogFormat,

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
}

/// Whether agents run under Landlock: `auto` when the kernel can (warning loudly when it
/// cannot), `landlock` always (refusing to start without it), `off` never.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfinementMode {
    #[default]
    Auto,
    Landlock,
    Off,
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
            log_format: LogFormat::Text,
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
        }
    }
}

/// What agents may read and execute by default: Debian's system directories, the image's
/// tools (/opt/clawdforge) and a checkout's `.tools/` (relative to the working directory).
pub const DEFAULT_READ_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/opt", ".tools",
];

/// Environment variables and the key each sets. `CLAWDFORGE_<KEY>` works for every key; these are
/// the old service's names (and the short names the README uses), kept as aliases.
pub const ENV_ALIASES: &[(&str, &str)] = &[
    ("ADMIN_BOOTSTRAP_TOKEN", "admin_bootstrap_token"),
    ("NATS_URL", "nats_url"),
    ("NATS_USER", "nats_user"),
    ("NATS_PASSWORD", "nats_password"),
    ("NATS_TOKEN", "nats_token"),
    ("NATS_CREDS", "nats_creds_file"),
    ("DB_PATH", "db_path"),
    ("ACPX_BIN", "acpx_bin"),
    ("ACPX_SESSIONS_CWD", "acpx_sessions_cwd"),
    ("ACPX_AGENT", "acpx_agent"),
    ("CLAUDE_BIN", "claude_bin"),
    ("RUNS_DIR", "runs_dir"),
    ("DEFAULT_MODEL", "default_model"),
    ("DEFAULT_TIMEOUT_SECS", "default_timeout_secs"),
    ("BIND_HOST", "bind_host"),
    ("BIND_PORT", "bind_port"),
    ("ALLOW_CIDRS", "allow_cidrs"),
    ("LOG_FORMAT", "log_format"),
];

/// The keys that can be set from the environment (`agents` is a table: TOML only).
pub fn env_keys() -> Vec<&'static str> {
    vec![
        "admin_bootstrap_token",
        "nats_url",
        "nats_user",
        "nats_password",
        "nats_token",
        "nats_creds_file",
        "db_path",
        "ledger_keep_text",
        "acpx_bin",
        "acpx_sessions_cwd",
        "acpx_agent",
        "acpx_ttl_secs",
        "agent_idle_secs",
        "permission_timeout_secs",
        "max_live_sessions",
        "session_ttl_secs",
        "session_hard_ttl_secs",
        "sweep_interval_secs",
        "worker_heartbeat_secs",
        "stream_heartbeat_secs",
        "shutdown_grace_secs",
        "max_concurrent_turns",
        "max_queued_turns",
        "claude_bin",
        "runs_dir",
        "default_model",
        "default_timeout_secs",
        "max_timeout_secs",
        "claude_permission_mode",
        "claude_allowed_tools",
        "claude_max_turns",
        "max_concurrent_runs",
        "max_queued_runs",
        "runs_retention_secs",
        "max_prompt_bytes",
        "max_files",
        "max_files_bytes",
        "bind_host",
        "bind_port",
        "allow_cidrs",
        "trusted_proxies",
        "max_request_bytes",
        "http_header_timeout_secs",
        "http_idle_timeout_secs",
        "http_max_connections",
        "log_format",
        "agent_homes_dir",
        "agent_confinement",
        "agent_env",
        "agent_read_dirs",
        "agent_connect_ports",
        "agent_credentials_file",
        "agent_max_file_bytes",
    ]
}

/// The environment variable names that set `key`, the prefixed one first.
pub fn env_names(key: &str) -> Vec<String> {
    let mut names = vec![format!("CLAWDFORGE_{}", key.to_ascii_uppercase())];
    names.extend(
        ENV_ALIASES
            .iter()
            .filter(|(_, k)| *k == key)
            .map(|(env, _)| env.to_string()),
    );
    names
}

/// The environment variables that carry secrets (every name of the keys that hold one).
pub fn secret_env_names() -> Vec<String> {
    SECRET_KEYS.iter().flat_map(|key| env_names(key)).collect()
}

/// The keys whose values are secrets: `clawdforge config` shows only whether they are set.
pub const SECRET_KEYS: &[&str] = &["admin_bootstrap_token", "nats_password", "nats_token"];

/// What stops startup because a setting is unusable. Every one reads `configuration: …` and
/// makes the process exit with [`ConfigError::EXIT_CODE`].
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    /// The exit code of a process stopped by a configuration error.
    pub const EXIT_CODE: u8 = 2;

    /// An unusable value of `key`, named by its environment variable and its key.
    pub fn setting(key: &str, why: impl std::fmt::Display) -> ConfigError {
        ConfigError(format!("{} {why}", setting_name(key)))
    }
}

/// How errors name a setting: its short environment variable and its key,
/// e.g. `DB_PATH (db_path)`.
pub fn setting_name(key: &str) -> String {
    let names = env_names(key);
    let env = names.last().expect("every key has an environment name");
    format!("{env} ({key})")
}

/// An agent as the config writes it: `NAME = "command"` (acpx) or a `[agents.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AgentEntry {
    Command(String),
    Table {
        command: String,
        #[serde(default)]
        backend: BackendKind,
        #[serde(default)]
        permissions: PermissionPolicy,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auth: Option<AuthEntry>,
    },
}

impl AgentEntry {
    fn parts(&self) -> (&str, BackendKind, PermissionPolicy) {
        match self {
            AgentEntry::Command(c) => (c, BackendKind::Acpx, PermissionPolicy::AllowAll),
            AgentEntry::Table {
                command,
                backend,
                permissions,
                ..
            } => (command, *backend, *permissions),
        }
    }

    fn auth(&self) -> Option<&AuthEntry> {
        match self {
            AgentEntry::Command(_) => None,
            AgentEntry::Table { auth, .. } => auth.as_ref(),
        }
    }
}

/// `auth` of an `[agents.NAME]` table as the config writes it:
/// `{ method = "api-key", env = "OPENAI_API_KEY" }` or
/// `{ method = "gateway", base_url = "http://…", token_env = "GATEWAY_TOKEN" }`.
/// Checked and made an [`AgentAuth`] at load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthEntry {
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

/// The ACP method id of a model gateway: the agent's model requests go to a base URL the
/// client gives in `authenticate`'s `_meta.gateway`.
pub const GATEWAY_METHOD: &str = "gateway";

/// Authentication methods that need a browser or a person at a terminal, which an agent run by
/// a worker has not: codex-acp's `chat-gpt` (`chatgpt`, `chat-gpt-device-code` in other
/// versions), Gemini CLI's `oauth-personal` (it prints a URL on stdout, the ACP channel, and
/// waits for input), Claude Code's logins.
pub const INTERACTIVE_AUTH_METHODS: &[&str] = &[
    "chat-gpt",
    "chatgpt",
    "chat-gpt-device-code",
    "oauth-personal",
    "claude-login",
    "claude-ai-login",
    "console-login",
];

/// How the native backend authenticates an agent that answers `session/new` (or
/// `session/load`) with ACP's "authentication required": once per agent process.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AgentAuth {
    /// `authenticate {methodId: method}`: the agent reads its key from the variable `env`, which
    /// the worker must have and `agent_env` must name.
    Key { method: String, env: String },
    /// `authenticate {methodId: "gateway", _meta.gateway: {baseUrl, headers}}`: the agent sends
    /// its model requests to `base_url` with `Authorization: Bearer <the value of token_env>`
    /// (a variable of the worker's, passed over ACP, not in the agent's environment).
    Gateway { base_url: String, token_env: String },
}

impl AgentAuth {
    /// The ACP method id it authenticates with.
    pub fn method(&self) -> &str {
        match self {
            AgentAuth::Key { method, .. } => method,
            AgentAuth::Gateway { .. } => GATEWAY_METHOD,
        }
    }

    /// The variable of the worker's environment it needs.
    pub fn variable(&self) -> &str {
        match self {
            AgentAuth::Key { env, .. } => env,
            AgentAuth::Gateway { token_env, .. } => token_env,
        }
    }
}

impl AuthEntry {
    /// The typed `auth`, or why it is unusable (`key`: how messages name this table's `auth`).
    pub fn parse(&self, key: &str) -> Result<AgentAuth, ConfigError> {
        let bad = |field: &str, why: String| ConfigError(format!("{key}.{field}: {why}"));
        let method = self.method.trim();
        if method.is_empty() {
            return Err(bad("method", "is empty".into()));
        }
        if INTERACTIVE_AUTH_METHODS.contains(&method) {
            return Err(bad(
                "method",
                format!(
                    "{method:?} needs a browser or a terminal, which an agent run by a worker has \
                     not; use a method that takes a key (with env) or \"{GATEWAY_METHOD}\""
                ),
            ));
        }
        if method == GATEWAY_METHOD {
            return self.gateway(&bad);
        }
        if self.base_url.is_some() || self.token_env.is_some() {
            let why = format!("base_url and token_env are for method = \"{GATEWAY_METHOD}\"");
            return Err(bad("base_url", why));
        }
        Ok(AgentAuth::Key {
            method: method.to_string(),
            env: variable(&bad, "env", self.env.as_deref(), method)?,
        })
    }

    fn gateway(&self, bad: &dyn Fn(&str, String) -> ConfigError) -> Result<AgentAuth, ConfigError> {
        if self.env.is_some() {
            let why = format!("is for methods that take a key, not \"{GATEWAY_METHOD}\"");
            return Err(bad("env", why));
        }
        let base_url = match &self.base_url {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => url.clone(),
            Some(url) => return Err(bad("base_url", format!("{url:?} is not an http(s) URL"))),
            None => {
                return Err(bad(
                    "base_url",
                    format!("method \"{GATEWAY_METHOD}\" needs it"),
                ))
            }
        };
        let token_env = variable(bad, "token_env", self.token_env.as_deref(), GATEWAY_METHOD)?;
        Ok(AgentAuth::Gateway {
            base_url,
            token_env,
        })
    }
}

/// The variable name in `field` of an `auth`, which `method` needs.
fn variable(
    bad: &dyn Fn(&str, String) -> ConfigError,
    field: &str,
    value: Option<&str>,
    method: &str,
) -> Result<String, ConfigError> {
    match value {
        Some(v) if valid_env_name(v) => Ok(v.to_string()),
        Some(v) => Err(bad(field, format!("{v:?} is not a variable name"))),
        None => Err(bad(field, format!("method {method:?} needs it"))),
    }
}

/// Which backend drives an agent's sessions.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Through the acpx CLI: one queue owner and agent process per session.
    #[default]
    Acpx,
    /// The worker speaks ACP to the agent itself: one agent process per app hosts its sessions.
    Acp,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Acpx => "acpx",
            BackendKind::Acp => "acp",
        }
    }
}

/// How an agent's permission requests are answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PermissionPolicy {
    /// Every request allowed.
    #[default]
    AllowAll,
    /// Tools of kind `read` and `search` allowed, the rest rejected.
    AllowReads,
    /// Every request rejected.
    DenyAll,
    /// Left to the streaming caller (native backend only; refused at load until it lands).
    Ask,
}

impl PermissionPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PermissionPolicy::AllowAll => "allow_all",
            PermissionPolicy::AllowReads => "allow_reads",
            PermissionPolicy::DenyAll => "deny_all",
            PermissionPolicy::Ask => "ask",
        }
    }
}

/// A configured agent: how it is started, by which backend, and who answers its permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentDef {
    pub command: AgentCommand,
    pub backend: BackendKind,
    pub permissions: PermissionPolicy,
    /// How the native backend authenticates it when it asks.
    pub auth: Option<AgentAuth>,
}

/// How a named agent is started by acpx.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentCommand {
    /// An acpx built-in agent (`claude`, `codex`, …).
    Builtin(String),
    /// The command line of a custom ACP agent, passed to acpx as `--agent`.
    Custom(String),
}

impl AgentCommand {
    pub fn parse(spec: &str) -> Result<AgentCommand, String> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err("is empty".into());
        }
        if spec
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            Ok(AgentCommand::Builtin(spec.to_string()))
        } else {
            Ok(AgentCommand::Custom(spec.to_string()))
        }
    }

    /// The command line that starts this agent as an ACP server for the native backend: a
    /// custom command split at whitespace, or the ACP adapter of a built-in agent acpx knows.
    pub fn acp_argv(&self) -> Option<Vec<String>> {
        match self {
            AgentCommand::Custom(cmd) => Some(cmd.split_whitespace().map(String::from).collect()),
            AgentCommand::Builtin(name) => match name.as_str() {
                "claude" => Some(vec!["claude-agent-acp".into()]),
                "codex" => Some(vec!["codex-acp".into()]),
                "gemini" => Some(vec!["gemini".into(), "--acp".into()]),
                _ => None,
            },
        }
    }

    /// The string stored in the ledger, from which the command is parsed again.
    pub fn spec(&self) -> &str {
        match self {
            AgentCommand::Builtin(s) | AgentCommand::Custom(s) => s,
        }
    }
}

/// The name the default agent goes by in requests and replies.
pub fn default_agent_name(cmd: &AgentCommand) -> String {
    match cmd {
        AgentCommand::Builtin(name) => name.clone(),
        AgentCommand::Custom(_) => "default".into(),
    }
}

/// A variable name agents may be given: letters, digits and '_', not starting with a digit.
fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_agent_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// Where the value of each key came from, as `clawdforge config` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Env(name) => write!(f, "env {name}"),
        }
    }
}

/// One line of the effective configuration: a key, its value (secrets masked) and its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub key: String,
    pub value: String,
    pub source: Source,
}

/// The layers a configuration is read from: the file (if any) and the environment's values.
struct Layers {
    file: Option<PathBuf>,
    /// (key, variable, value), aliases before the `CLAWDFORGE_` name of the same key.
    from_env: Vec<(String, String, String)>,
}

impl Layers {
    fn read(file: Option<&Path>, env: &[(String, String)]) -> Result<Layers, ConfigError> {
        let named = file.map(Path::to_path_buf).or_else(|| {
            env.iter()
                .find(|(k, _)| k == "CLAWDFORGE_CONFIG")
                .map(|(_, v)| PathBuf::from(v))
        });
        let file = match named {
            Some(path) if !path.is_file() => {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )))
            }
            Some(path) => Some(path),
            None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.is_file()),
        };
        let mut from_env = Vec::new();
        for key in env_keys() {
            for name in env_names(key).into_iter().rev() {
                let value = env.iter().find(|(k, _)| *k == name).map(|(_, v)| v);
                if SECRET_KEYS.contains(&key) {
                    if let Some(secret) = secret_file(env, &name, value.is_some())? {
                        from_env.push((key.to_string(), format!("{name}_FILE"), secret));
                        continue;
                    }
                }
                if let Some(value) = value {
                    from_env.push((key.to_string(), name, value.clone()));
                }
            }
        }
        Ok(Layers { file, from_env })
    }

    fn figment(&self) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &self.file {
            figment = figment.merge(Toml::file_exact(path));
        }
        // Aliases first, so that the CLAWDFORGE_ name wins when both are set.
        for (key, _, value) in &self.from_env {
            figment = figment.merge(Serialized::default(key, env_value(key, value)));
        }
        figment
    }

    /// The variable that set `key`, if one did (the last one merged wins).
    fn env_name(&self, key: &str) -> Option<&str> {
        self.from_env
            .iter()
            .rev()
            .find(|(k, _, _)| k == key)
            .map(|(_, name, _)| name.as_str())
    }

    /// Where `key` came from; `file` is the config file read on its own.
    fn source(&self, key: &str, file: Option<&Figment>) -> Source {
        if let Some(name) = self.env_name(key) {
            return Source::Env(name.to_string());
        }
        match (&self.file, file) {
            (Some(path), Some(file)) if file.contains(key) => Source::File(path.clone()),
            _ => Source::Default,
        }
    }

    /// A figment error, naming the variable or the file the bad value came from.
    fn extract_error(&self, e: figment::Error) -> ConfigError {
        let key = e.path.first().cloned().unwrap_or_default();
        let source = match (self.env_name(&key), &self.file) {
            (Some(name), _) => format!("environment variable {name}"),
            (None, Some(path)) => format!("config file {}", path.display()),
            (None, None) => DEFAULT_CONFIG_FILE.to_string(),
        };
        let key_part = if key.is_empty() {
            String::new()
        } else {
            format!(" (key `{key}`)")
        };
        ConfigError(format!("bad value in {source}{key_part}: {}", e.kind))
    }
}

/// The secret in the file `<name>_FILE` names (the Docker secrets convention), without the
/// line break a file ends with; an error when `<name>` is set as well, or the file unreadable.
fn secret_file(
    env: &[(String, String)],
    name: &str,
    also_set: bool,
) -> Result<Option<String>, ConfigError> {
    let file_var = format!("{name}_FILE");
    let Some((_, path)) = env.iter().find(|(k, _)| *k == file_var) else {
        return Ok(None);
    };
    if also_set {
        return Err(ConfigError(format!(
            "{name} and {file_var} are both set: give the secret one way"
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{file_var}: cannot read {path}: {e}")))?;
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() {
        return Err(ConfigError(format!("{file_var}: {path} is empty")));
    }
    Ok(Some(secret.to_string()))
}

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
        let config: Config = layers
            .figment()
            .extract()
            .map_err(|e| layers.extract_error(e))?;
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
        let values = serde_json::to_value(&config).expect("config serializes");
        let file = layers
            .file
            .as_ref()
            .map(|path| Figment::from(Toml::file_exact(path)));
        let shown = values
            .as_object()
            .expect("config is a table")
            .iter()
            .map(|(key, value)| Shown {
                key: key.clone(),
                value: shown_value(key, value),
                source: layers.source(key, file.as_ref()),
            })
            .collect();
        Ok((config, shown))
    }

    fn validate(&self, layers: &Layers) -> Result<(), ConfigError> {
        let source = |key: &str| {
            layers
                .env_name(key)
                .map(str::to_string)
                .unwrap_or_else(|| format!("`{key}`"))
        };
        let bad = |key: &str, why: &str| Err(ConfigError(format!("{}: {why}", source(key))));
        if let Err(why) = AgentCommand::parse(&self.acpx_agent) {
            return bad("acpx_agent", &why);
        }
        self.validate_agents()?;
        if let Err(why) = self.nats_servers() {
            return bad("nats_url", &why);
        }
        for (key, list) in [
            ("allow_cidrs", &self.allow_cidrs),
            ("trusted_proxies", &self.trusted_proxies),
        ] {
            crate::cidr::parse_cidrs(list, &source(key)).map_err(|e| ConfigError(e.to_string()))?;
        }
        for (key, value) in [
            ("max_live_sessions", self.max_live_sessions as usize),
            ("max_concurrent_turns", self.max_concurrent_turns),
            ("default_timeout_secs", self.default_timeout_secs as usize),
            ("max_timeout_secs", self.max_timeout_secs as usize),
            ("sweep_interval_secs", self.sweep_interval_secs as usize),
            ("worker_heartbeat_secs", self.worker_heartbeat_secs as usize),
            ("stream_heartbeat_secs", self.stream_heartbeat_secs as usize),
            ("max_prompt_bytes", self.max_prompt_bytes),
            ("max_concurrent_runs", self.max_concurrent_runs),
            (
                "http_header_timeout_secs",
                self.http_header_timeout_secs as usize,
            ),
            (
                "http_idle_timeout_secs",
                self.http_idle_timeout_secs as usize,
            ),
            ("http_max_connections", self.http_max_connections),
            ("agent_max_file_bytes", self.agent_max_file_bytes as usize),
        ] {
            if value == 0 {
                return bad(key, "must be greater than 0");
            }
        }
        if let Some(key) = self.unbounded_duration() {
            return bad(key, "must be at most ten years (315360000 seconds)");
        }
        if self.default_timeout_secs > self.max_timeout_secs {
            return bad("default_timeout_secs", "must not exceed max_timeout_secs");
        }
        if self.acpx_bin.trim().is_empty() {
            return bad("acpx_bin", "is empty");
        }
        if self.claude_bin.trim().is_empty() {
            return bad("claude_bin", "is empty");
        }
        if let Some(name) = self.agent_env.iter().find(|n| !valid_env_name(n)) {
            return bad("agent_env", &format!("{name:?} is not a variable name"));
        }
        if self.agent_connect_ports.contains(&0) {
            return bad("agent_connect_ports", "a port is 1-65535");
        }
        Ok(())
    }

    fn validate_agents(&self) -> Result<(), ConfigError> {
        for (name, entry) in &self.agents {
            if !valid_agent_name(name) {
                return Err(ConfigError(format!(
                    "agents.{name}: an agent name is 1-64 letters, digits, '-', '_' or '.'"
                )));
            }
            let (spec, backend, permissions) = entry.parts();
            let key = match entry {
                AgentEntry::Command(_) => format!("agents.{name}"),
                AgentEntry::Table { .. } => format!("agents.{name}.command"),
            };
            let command =
                AgentCommand::parse(spec).map_err(|why| ConfigError(format!("{key}: {why}")))?;
            if backend == BackendKind::Acp {
                if let AgentCommand::Builtin(b) = &command {
                    if command.acp_argv().is_none() {
                        return Err(ConfigError(format!(
                            "{key}: {b:?} is not an agent the acp backend knows by name \
                             (claude, codex, gemini); give its command line"
                        )));
                    }
                }
            }
            if backend == BackendKind::Acpx && permissions == PermissionPolicy::Ask {
                return Err(ConfigError(format!(
                    "agents.{name}.permissions: \"ask\" needs backend = \"acp\" \
                     (acpx answers permissions itself)"
                )));
            }
            if let Some(auth) = entry.auth() {
                self.validate_auth(name, backend, auth)?;
            }
        }
        Ok(())
    }

    /// An agent's `auth`: for the native backend, usable, and a key's variable given to agents.
    fn validate_auth(
        &self,
        name: &str,
        backend: BackendKind,
        auth: &AuthEntry,
    ) -> Result<(), ConfigError> {
        let key = format!("agents.{name}.auth");
        if backend == BackendKind::Acpx {
            return Err(ConfigError(format!(
                "{key}: needs backend = \"acp\" (acpx authenticates by itself, from \
                 ACPX_AUTH_<METHOD> variables named in agent_env: see the README)"
            )));
        }
        if let AgentAuth::Key { env, .. } = auth.parse(&key)? {
            if !self.agent_env.contains(&env) {
                return Err(ConfigError(format!(
                    "{key}.env: {env} is not in {}, so the agent would not get it: add it there",
                    setting_name("agent_env")
                )));
            }
        }
        Ok(())
    }

    /// The first duration past ten years: durations are turned into timestamps, and past that
    /// they overflow or mean nothing.
    fn unbounded_duration(&self) -> Option<&'static str> {
        const TEN_YEARS: u64 = 10 * 365 * 24 * 3600;
        [
            ("session_ttl_secs", self.session_ttl_secs),
            ("session_hard_ttl_secs", self.session_hard_ttl_secs),
            ("sweep_interval_secs", self.sweep_interval_secs),
            ("worker_heartbeat_secs", self.worker_heartbeat_secs),
            ("stream_heartbeat_secs", self.stream_heartbeat_secs),
            ("shutdown_grace_secs", self.shutdown_grace_secs),
            ("runs_retention_secs", self.runs_retention_secs),
            ("max_timeout_secs", self.max_timeout_secs),
            ("acpx_ttl_secs", self.acpx_ttl_secs),
            ("agent_idle_secs", self.agent_idle_secs),
            ("permission_timeout_secs", self.permission_timeout_secs),
            ("http_header_timeout_secs", self.http_header_timeout_secs),
            ("http_idle_timeout_secs", self.http_idle_timeout_secs),
        ]
        .into_iter()
        .find(|(_, value)| *value > TEN_YEARS)
        .map(|(key, _)| key)
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
            .map(|(name, entry)| {
                let (spec, backend, permissions) = entry.parts();
                let def = AgentDef {
                    command: AgentCommand::parse(spec).expect("validated at load"),
                    backend,
                    permissions,
                    auth: entry
                        .auth()
                        .map(|a| a.parse(name).expect("validated at load")),
                };
                (name.clone(), def)
            })
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

/// A value as `clawdforge config` prints it: secrets masked (a NATS URL's password too), unset
/// values as `-`, strings bare, the rest as JSON.
fn shown_value(key: &str, value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".into(),
        _ if SECRET_KEYS.contains(&key) => "(set, hidden)".into(),
        serde_json::Value::String(text) if text.is_empty() => "\"\"".into(),
        serde_json::Value::String(text) if key == "nats_url" => mask_url_passwords(text),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// `nats://user:secret@host` → `nats://user:***@host`, for each URL of a comma-separated list.
pub fn mask_url_passwords(urls: &str) -> String {
    urls.split(',')
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let userinfo = &url[scheme + 3..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                    None => format!("{}***{}", &url[..scheme + 3], &url[at..]),
                }
            }
            _ => url.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Optional keys that hold a number: their default (none) does not tell their type.
const OPTIONAL_NUMBER_KEYS: &[&str] = &["claude_max_turns"];

/// Environment values are strings. A key whose default is a number or a boolean (or that is an
/// optional number) gets the value parsed as one, so that figment type-checks it; every other
/// key takes the string as it is.
fn env_value(key: &str, raw: &str) -> figment::value::Value {
    use figment::value::Value;
    let defaults = serde_json::to_value(Config::default()).expect("config serializes");
    let typed = OPTIONAL_NUMBER_KEYS.contains(&key)
        || matches!(
            defaults.get(key),
            Some(serde_json::Value::Number(_) | serde_json::Value::Bool(_))
        );
    if matches!(defaults.get(key), Some(serde_json::Value::Array(_))) {
        // A list: comma-separated, each item typed as it reads (a port is a number).
        let items: Vec<Value> = raw
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| match item.parse::<u64>() {
                Ok(n) => Value::from(n),
                Err(_) => Value::from(item.to_string()),
            })
            .collect();
        return Value::from(items);
    }
    if typed {
        let Ok(v) = raw.trim().parse::<Value>();
        if !matches!(v, Value::Dict(..) | Value::Array(..)) {
            return v;
        }
    }
    Value::from(raw.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_hold_without_file_or_env() {
        let c = Config::load_from(None, &[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.max_live_sessions, 32);
        assert_eq!(c.default_model, "sonnet");
        assert_eq!(c.default_timeout_secs, 120);
        assert_eq!(c.nats_url, "nats://127.0.0.1:4222");
    }

    #[test]
    fn old_service_names_work() {
        let c = Config::load_from(
            None,
            &env(&[
                ("DB_PATH", "/data/clawdforge.db"),
                ("CLAWDFORGE_MAX_LIVE_SESSIONS", "5"),
                ("ACPX_BIN", "/usr/bin/acpx"),
                ("ADMIN_BOOTSTRAP_TOKEN", "root"),
                ("BIND_PORT", "9000"),
                ("DEFAULT_MODEL", "opus"),
                ("ALLOW_CIDRS", "10.0.0.0/8,192.168.1.0/24"),
            ]),
        )
        .unwrap();
        assert_eq!(c.db_path, PathBuf::from("/data/clawdforge.db"));
        assert_eq!(c.max_live_sessions, 5);
        assert_eq!(c.acpx_bin, "/usr/bin/acpx");
        assert_eq!(c.admin_bootstrap_token.as_deref(), Some("root"));
        assert_eq!(c.bind_port, 9000);
        assert_eq!(c.default_model, "opus");
        assert_eq!(c.allow_cidrs, "10.0.0.0/8,192.168.1.0/24");
    }

    #[test]
    fn optional_numbers_from_the_environment() {
        let c = Config::load_from(None, &env(&[("CLAWDFORGE_CLAUDE_MAX_TURNS", "3")])).unwrap();
        assert_eq!(c.claude_max_turns, Some(3));
        let err = Config::load_from(None, &env(&[("CLAWDFORGE_CLAUDE_MAX_TURNS", "many")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CLAWDFORGE_CLAUDE_MAX_TURNS"), "{err}");
    }

    #[test]
    fn prefixed_name_wins_over_alias() {
        let c = Config::load_from(
            None,
            &env(&[("DB_PATH", "/a.db"), ("CLAWDFORGE_DB_PATH", "/b.db")]),
        )
        .unwrap();
        assert_eq!(c.db_path, PathBuf::from("/b.db"));
    }

    #[test]
    fn numeric_looking_strings_stay_strings() {
        let c = Config::load_from(
            None,
            &env(&[
                ("ADMIN_BOOTSTRAP_TOKEN", "12345"),
                ("DEFAULT_MODEL", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(c.admin_bootstrap_token.as_deref(), Some("12345"));
        assert_eq!(c.default_model, "true");
    }

    #[test]
    fn bad_value_names_the_variable() {
        let err = Config::load_from(None, &env(&[("CLAWDFORGE_MAX_LIVE_SESSIONS", "lots")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CLAWDFORGE_MAX_LIVE_SESSIONS"), "{err}");
        let err = Config::load_from(None, &env(&[("BIND_PORT", "99999")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("BIND_PORT"), "{err}");
        let err = Config::load_from(None, &env(&[("DEFAULT_TIMEOUT_SECS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("DEFAULT_TIMEOUT_SECS"), "{err}");
        let err = Config::load_from(None, &env(&[("ACPX_AGENT", "  ")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ACPX_AGENT"), "{err}");
    }

    #[test]
    fn toml_file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "max_live_sessions = 7\ndefault_model = \"haiku\"\n[agents]\necho = \"node /x/agent.mjs\"\ncodex = \"codex\"\n",
        )
        .unwrap();
        let c = Config::load_from(Some(&path), &env(&[("DEFAULT_MODEL", "opus")])).unwrap();
        assert_eq!(c.max_live_sessions, 7);
        assert_eq!(c.default_model, "opus");
        let (default, table) = c.agent_table();
        assert_eq!(default, "claude");
        assert_eq!(
            table["claude"].command,
            AgentCommand::Builtin("claude".into())
        );
        assert_eq!(
            table["codex"].command,
            AgentCommand::Builtin("codex".into())
        );
        assert_eq!(
            table["echo"].command,
            AgentCommand::Custom("node /x/agent.mjs".into())
        );
        assert!(
            table
                .values()
                .all(|d| d.backend == BackendKind::Acpx
                    && d.permissions == PermissionPolicy::AllowAll)
        );
    }

    #[test]
    fn agent_tables_give_backend_and_permissions_and_bad_ones_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let load = |toml: &str| {
            std::fs::write(&path, toml).unwrap();
            Config::load_from(Some(&path), &[])
        };
        let c = load(
            "[agents.native]\ncommand = \"node /x/agent.mjs\"\nbackend = \"acp\"\n\
             [agents.reader]\ncommand = \"codex\"\npermissions = \"allow_reads\"\n\
             [agents.claude]\ncommand = \"claude\"\nbackend = \"acp\"\npermissions = \"deny_all\"\n",
        )
        .unwrap();
        let (default, table) = c.agent_table();
        let def = |b, p, c: AgentCommand| AgentDef {
            command: c,
            backend: b,
            permissions: p,
            auth: None,
        };
        assert_eq!(
            table["native"],
            def(
                BackendKind::Acp,
                PermissionPolicy::AllowAll,
                AgentCommand::Custom("node /x/agent.mjs".into())
            )
        );
        assert_eq!(
            table["reader"],
            def(
                BackendKind::Acpx,
                PermissionPolicy::AllowReads,
                AgentCommand::Builtin("codex".into())
            )
        );
        // A table named like the default agent sets the default agent.
        assert_eq!(default, "claude");
        assert_eq!(
            table["claude"],
            def(
                BackendKind::Acp,
                PermissionPolicy::DenyAll,
                AgentCommand::Builtin("claude".into())
            )
        );
        assert_eq!(
            table["claude"].command.acp_argv().unwrap(),
            ["claude-agent-acp"]
        );

        let asking = load(
            "[agents.a]\ncommand = \"node a.mjs\"\nbackend = \"acp\"\npermissions = \"ask\"\n",
        )
        .unwrap()
        .agent_table()
        .1;
        assert_eq!(asking["a"].permissions, PermissionPolicy::Ask);
        let refused = |toml: &str, key: &str| {
            let e = load(toml).unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        };
        refused(
            "[agents.a]\ncommand = \"x\"\npermissions = \"ask\"\n",
            "agents.a.permissions",
        );
        refused(
            "[agents.a]\ncommand = \"nosuch\"\nbackend = \"acp\"\n",
            "agents.a.command",
        );
        refused("[agents.a]\ncommand = \"\"\n", "agents.a.command");
        refused(
            "[agents.a]\ncommand = \"x\"\nbackend = \"http\"\n",
            "agents",
        );
        refused(
            "[agents.a]\ncommand = \"x\"\npermissions = \"maybe\"\n",
            "agents",
        );
    }

    #[test]
    fn agent_auth_is_typed_at_load_and_unusable_ones_name_their_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let load = |toml: &str| {
            std::fs::write(&path, toml).unwrap();
            Config::load_from(
                Some(&path),
                &env(&[("CLAWDFORGE_AGENT_ENV", "OPENAI_API_KEY")]),
            )
        };
        let c = load(
            "[agents.codex]\ncommand = \"codex\"\nbackend = \"acp\"\n\
             auth = { method = \"api-key\", env = \"OPENAI_API_KEY\" }\n\
             [agents.gw]\ncommand = \"gemini\"\nbackend = \"acp\"\n\
             auth = { method = \"gateway\", base_url = \"http://127.0.0.1:9/v1\", \
             token_env = \"GW_TOKEN\" }\n",
        )
        .unwrap();
        let table = c.agent_table().1;
        assert_eq!(
            table["codex"].auth,
            Some(AgentAuth::Key {
                method: "api-key".into(),
                env: "OPENAI_API_KEY".into()
            })
        );
        // The gateway's token is passed over ACP: agent_env need not name it.
        assert_eq!(
            table["gw"].auth,
            Some(AgentAuth::Gateway {
                base_url: "http://127.0.0.1:9/v1".into(),
                token_env: "GW_TOKEN".into()
            })
        );
        assert_eq!(table["claude"].auth, None);

        let refused = |auth: &str, backend: &str, says: &str| {
            let toml = format!(
                "[agents.codex]\ncommand = \"codex\"\nbackend = \"{backend}\"\nauth = {auth}\n"
            );
            let e = load(&toml).unwrap_err().to_string();
            assert!(e.contains(says), "{auth}: {e}");
        };
        refused(
            r#"{ method = "api-key", env = "CODEX_API_KEY" }"#,
            "acp",
            "agents.codex.auth.env: CODEX_API_KEY is not in CLAWDFORGE_AGENT_ENV (agent_env), \
             so the agent would not get it: add it there",
        );
        refused(
            r#"{ method = "chat-gpt" }"#,
            "acp",
            "agents.codex.auth.method: \"chat-gpt\" needs a browser or a terminal",
        );
        refused(
            r#"{ method = "oauth-personal", env = "OPENAI_API_KEY" }"#,
            "acp",
            "\"oauth-personal\" needs a browser or a terminal",
        );
        refused(
            r#"{ method = "api-key", env = "OPENAI_API_KEY" }"#,
            "acpx",
            "agents.codex.auth: needs backend = \"acp\" (acpx authenticates by itself",
        );
        refused(
            r#"{ method = "api-key" }"#,
            "acp",
            "agents.codex.auth.env: method \"api-key\" needs it",
        );
        refused(
            r#"{ method = "gateway", token_env = "T" }"#,
            "acp",
            "agents.codex.auth.base_url: method \"gateway\" needs it",
        );
        refused(
            r#"{ method = "gateway", base_url = "127.0.0.1:9", token_env = "T" }"#,
            "acp",
            "is not an http(s) URL",
        );
        refused(
            r#"{ method = "api-key", env = "OPENAI_API_KEY", base_url = "http://x" }"#,
            "acp",
            "base_url and token_env are for method = \"gateway\"",
        );
        refused(r#"{ method = "api-key", key = "sk-x" }"#, "acp", "agents");
    }

    #[test]
    fn unknown_toml_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "max_live_sesions = 7\n").unwrap();
        let err = Config::load_from(Some(&path), &[]).unwrap_err().to_string();
        assert!(err.contains("max_live_sesions"), "{err}");
    }

    #[test]
    fn missing_named_file_is_an_error() {
        let err = Config::load_from(Some(Path::new("/nonexistent/c.toml")), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/c.toml"), "{err}");
    }

    #[test]
    fn every_field_can_be_set_from_the_environment() {
        let fields = serde_json::to_value(Config::default()).unwrap();
        let mut keys: Vec<&str> = fields
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "agents")
            .collect();
        keys.sort();
        let mut listed = env_keys();
        listed.sort();
        assert_eq!(keys, listed);
    }

    #[test]
    fn nats_url_takes_several_servers() {
        let c =
            Config::load_from(None, &env(&[("NATS_URL", "nats://a:4222, nats://b:4223")])).unwrap();
        assert_eq!(c.nats_servers().unwrap().len(), 2);
        let err = Config::load_from(None, &env(&[("NATS_URL", "http://[bad")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("NATS_URL"), "{err}");
    }

    #[test]
    fn readme_documents_every_key() {
        let readme = include_str!("../README.md");
        for key in env_keys().into_iter().chain(["agents"]) {
            let row = format!("| `{key}` |");
            assert!(
                readme.contains(&row),
                "README's configuration table lacks {key}"
            );
            for name in env_names(key).into_iter().skip(1) {
                assert!(
                    readme.contains(&format!("{row} `{name}` |")),
                    "README's row of {key} lacks its variable {name}"
                );
            }
        }
        let defaults = serde_json::to_value(Config::default()).unwrap();
        let table = readme
            .split("\n## Configuration\n")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("README has a Configuration section");
        for line in table.lines().filter(|l| l.starts_with("| `")) {
            let key = line.split('`').nth(1).unwrap();
            assert!(
                defaults.get(key).is_some(),
                "README documents `{key}`, which is no config key"
            );
        }
    }

    #[test]
    fn durations_are_bounded_and_secrets_are_named() {
        let err = Config::load_from(
            None,
            &env(&[("CLAWDFORGE_SESSION_TTL_SECS", "18446744073709551615")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("CLAWDFORGE_SESSION_TTL_SECS"), "{err}");
        let secrets = secret_env_names();
        for name in [
            "ADMIN_BOOTSTRAP_TOKEN",
            "CLAWDFORGE_ADMIN_BOOTSTRAP_TOKEN",
            "NATS_PASSWORD",
            "NATS_TOKEN",
        ] {
            assert!(secrets.iter().any(|s| s == name), "{name}");
        }
    }

    #[test]
    fn bad_cidrs_stop_every_command_naming_the_variable() {
        let err = Config::load_from(None, &env(&[("ALLOW_CIDRS", "10.0.0.0/33")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "configuration: ALLOW_CIDRS: `10.0.0.0/33` is not an IP network in CIDR notation \
             (such as 192.168.1.0/24 or fd00::/8): the prefix length 33 is too long: at most 32 \
             for an IPv4 address"
        );
        let err = Config::load_from(
            None,
            &env(&[("CLAWDFORGE_TRUSTED_PROXIES", "10.0.0.1, proxy")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("configuration: CLAWDFORGE_TRUSTED_PROXIES: `proxy`"),
            "{err}"
        );
    }

    #[test]
    fn explain_shows_each_source_and_masks_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "max_live_sessions = 7\nbind_port = 9001\n").unwrap();
        let (config, shown) = Config::explain(
            Some(&path),
            &env(&[
                ("BIND_PORT", "9002"),
                ("NATS_URL", "nats://forge:hunter2@a:4222,nats://tok@b:4222"),
                ("NATS_PASSWORD", "hunter2"),
                ("LOG_FORMAT", "json"),
            ]),
        )
        .unwrap();
        assert_eq!(config.log_format, LogFormat::Json);
        let line = |key: &str| shown.iter().find(|s| s.key == key).unwrap().clone();
        assert_eq!(line("max_live_sessions").value, "7");
        assert_eq!(line("max_live_sessions").source, Source::File(path.clone()));
        assert_eq!(line("bind_port").value, "9002");
        assert_eq!(line("bind_port").source, Source::Env("BIND_PORT".into()));
        assert_eq!(line("default_model").source, Source::Default);
        assert_eq!(line("nats_password").value, "(set, hidden)");
        assert_eq!(line("nats_token").value, "-");
        assert_eq!(
            line("nats_url").value,
            "nats://forge:***@a:4222,nats://***@b:4222"
        );
        assert_eq!(shown.len(), env_keys().len() + 1, "every key, agents too");
        assert!(!format!("{shown:?}").contains("hunter2"));
    }

    #[test]
    fn secrets_come_from_files_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "from-a-file\n").unwrap();
        let file = path.to_string_lossy().into_owned();
        let c = Config::load_from(None, &env(&[("ADMIN_BOOTSTRAP_TOKEN_FILE", &file)])).unwrap();
        assert_eq!(c.admin_bootstrap_token.as_deref(), Some("from-a-file"));
        let c = Config::load_from(None, &env(&[("CLAWDFORGE_NATS_PASSWORD_FILE", &file)])).unwrap();
        assert_eq!(c.nats_password.as_deref(), Some("from-a-file"));
        let err = Config::load_from(
            None,
            &env(&[("NATS_TOKEN_FILE", &file), ("NATS_TOKEN", "x")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("NATS_TOKEN and NATS_TOKEN_FILE are both set"),
            "{err}"
        );
        let err = Config::load_from(None, &env(&[("NATS_TOKEN_FILE", "/nonexistent/t")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("NATS_TOKEN_FILE: cannot read /nonexistent/t"),
            "{err}"
        );
    }

    #[test]
    fn log_format_is_text_or_json() {
        let err = Config::load_from(None, &env(&[("CLAWDFORGE_LOG_FORMAT", "yaml")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CLAWDFORGE_LOG_FORMAT"), "{err}");
    }

    #[test]
    fn agent_lists_are_comma_separated_in_the_environment_and_checked() {
        let c = Config::load_from(
            None,
            &env(&[
                ("CLAWDFORGE_AGENT_ENV", "ANTHROPIC_API_KEY, MY_PROXY"),
                ("CLAWDFORGE_AGENT_CONNECT_PORTS", "443,8443"),
                ("CLAWDFORGE_AGENT_READ_DIRS", "/usr,/opt/tools"),
                ("CLAWDFORGE_AGENT_CONFINEMENT", "landlock"),
            ]),
        )
        .unwrap();
        assert_eq!(c.agent_env, ["ANTHROPIC_API_KEY", "MY_PROXY"]);
        assert_eq!(c.agent_connect_ports, [443, 8443]);
        assert_eq!(
            c.agent_read_dirs,
            [PathBuf::from("/usr"), "/opt/tools".into()]
        );
        assert_eq!(c.agent_confinement, ConfinementMode::Landlock);
        let refused = |var: &str, value: &str| {
            let err = Config::load_from(None, &env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(var), "{var}={value}: {err}");
        };
        refused("CLAWDFORGE_AGENT_ENV", "OK,NOT-A-NAME");
        refused("CLAWDFORGE_AGENT_CONNECT_PORTS", "443,0");
        refused("CLAWDFORGE_AGENT_CONNECT_PORTS", "https");
        refused("CLAWDFORGE_AGENT_CONFINEMENT", "sometimes");
        refused("CLAWDFORGE_AGENT_MAX_FILE_BYTES", "0");
    }

    #[test]
    fn custom_default_agent_is_named_default() {
        let c =
            Config::load_from(None, &env(&[("ACPX_AGENT", "node /x/agent.mjs --fast")])).unwrap();
        let (default, table) = c.agent_table();
        assert_eq!(default, "default");
        assert_eq!(
            table["default"].command,
            AgentCommand::Custom("node /x/agent.mjs --fast".into())
        );
    }

    /// Whether `line` (a comment of config/clawdforge.toml without its `# `) is a setting.
    fn is_setting(line: &str) -> bool {
        line.split_once(" = ").is_some_and(|(key, _)| {
            key.starts_with(|c: char| c.is_ascii_lowercase())
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
    }

    #[test]
    fn shipped_config_file_shows_every_key_with_its_default() {
        let text = include_str!("../config/clawdforge.toml");
        let dir = tempfile::tempdir().unwrap();

        // As shipped, every setting is commented out: its presence changes nothing.
        let as_is = dir.path().join("as-is.toml");
        std::fs::write(&as_is, text).unwrap();
        assert_eq!(
            Config::load_from(Some(&as_is), &[]).unwrap(),
            Config::default()
        );

        // With the `# ` of its settings removed, it loads and shows every key with its default.
        let mut keys: Vec<String> = Vec::new();
        let mut unset: Vec<String> = Vec::new();
        let mut uncommented = String::new();
        for line in text.lines() {
            match line.strip_prefix("# ") {
                Some("[agents]") => {
                    keys.push("agents".into());
                    uncommented.push_str("[agents]");
                }
                Some(setting) if is_setting(setting) => {
                    let key = setting.split(" = ").next().unwrap().to_string();
                    if setting.ends_with("# unset by default") {
                        unset.push(key.clone());
                    }
                    keys.push(key);
                    uncommented.push_str(setting);
                }
                _ => uncommented.push_str(line),
            }
            uncommented.push('\n');
        }
        let path = dir.path().join("uncommented.toml");
        std::fs::write(&path, &uncommented).unwrap();
        let loaded = Config::load_from(Some(&path), &[])
            .unwrap_or_else(|e| panic!("config/clawdforge.toml, uncommented: {e}"));

        let defaults = serde_json::to_value(Config::default()).unwrap();
        let mut fields: Vec<String> = defaults.as_object().unwrap().keys().cloned().collect();
        fields.sort();
        let mut shown = keys.clone();
        shown.sort();
        assert_eq!(
            shown, fields,
            "config/clawdforge.toml must show every config key once, and no other"
        );

        let loaded = serde_json::to_value(&loaded).unwrap();
        for key in &keys {
            if unset.contains(key) {
                assert!(
                    defaults[key].is_null(),
                    "config/clawdforge.toml marks {key} unset by default, but its default is {}",
                    defaults[key]
                );
            } else {
                assert_eq!(
                    loaded[key], defaults[key],
                    "config/clawdforge.toml shows {key} = {}, but its default is {}",
                    loaded[key], defaults[key]
                );
            }
        }
    }
}
