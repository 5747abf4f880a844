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
    /// Further agents a request may name: name → built-in name or command line.
    pub agents: BTreeMap<String, String>,

    pub max_live_sessions: u64,
    pub session_ttl_secs: u64,
    pub session_hard_ttl_secs: u64,
    pub sweep_interval_secs: u64,
    /// How often a worker writes its heartbeat to the ledger; one silent for three times this
    /// is dead, and the turns and runs it left running are recorded as interrupted.
    pub worker_heartbeat_secs: u64,
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
            max_live_sessions: 32,
            session_ttl_secs: 3600,
            session_hard_ttl_secs: 86400,
            sweep_interval_secs: 60,
            worker_heartbeat_secs: 10,
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
        }
    }
}

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
        "max_live_sessions",
        "session_ttl_secs",
        "session_hard_ttl_secs",
        "sweep_interval_secs",
        "worker_heartbeat_secs",
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
    ["admin_bootstrap_token", "nats_password", "nats_token"]
        .iter()
        .flat_map(|key| env_names(key))
        .collect()
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

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

fn valid_agent_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
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
        let named = file.map(Path::to_path_buf).or_else(|| {
            env.iter()
                .find(|(k, _)| k == "CLAWDFORGE_CONFIG")
                .map(|(_, v)| PathBuf::from(v))
        });
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match &named {
            Some(path) => {
                if !path.is_file() {
                    return Err(ConfigError(format!(
                        "config file {} does not exist",
                        path.display()
                    )));
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None => {
                if Path::new(DEFAULT_CONFIG_FILE).is_file() {
                    figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE));
                }
            }
        }
        // Aliases first, so that the CLAWDFORGE_ name wins when both are set.
        let mut from_env: Vec<(String, String, String)> = Vec::new();
        for key in env_keys() {
            for name in env_names(key).into_iter().rev() {
                if let Some((_, value)) = env.iter().find(|(k, _)| *k == name) {
                    from_env.push((key.to_string(), name, value.clone()));
                }
            }
        }
        for (key, _, value) in &from_env {
            figment = figment.merge(Serialized::default(key, env_value(key, value)));
        }
        let config: Config = figment.extract().map_err(|e| {
            let key = e.path.first().cloned().unwrap_or_default();
            let source = from_env
                .iter()
                .rev()
                .find(|(k, _, _)| *k == key)
                .map(|(_, name, _)| format!("environment variable {name}"))
                .or_else(|| {
                    named
                        .as_ref()
                        .map(|p| format!("config file {}", p.display()))
                })
                .unwrap_or_else(|| DEFAULT_CONFIG_FILE.to_string());
            let key_part = if key.is_empty() {
                String::new()
            } else {
                format!(" (key `{key}`)")
            };
            ConfigError(format!("bad value in {source}{key_part}: {}", e.kind))
        })?;
        config.validate(&from_env)?;
        Ok(config)
    }

    fn validate(&self, from_env: &[(String, String, String)]) -> Result<(), ConfigError> {
        let source = |key: &str| {
            from_env
                .iter()
                .rev()
                .find(|(k, _, _)| k == key)
                .map(|(_, name, _)| name.clone())
                .unwrap_or_else(|| format!("`{key}`"))
        };
        let bad = |key: &str, why: &str| Err(ConfigError(format!("{}: {why}", source(key))));
        if let Err(why) = AgentCommand::parse(&self.acpx_agent) {
            return bad("acpx_agent", &why);
        }
        for (name, spec) in &self.agents {
            if !valid_agent_name(name) {
                return Err(ConfigError(format!(
                    "agents.{name}: an agent name is 1-64 letters, digits, '-', '_' or '.'"
                )));
            }
            if let Err(why) = AgentCommand::parse(spec) {
                return Err(ConfigError(format!("agents.{name}: {why}")));
            }
        }
        if let Err(why) = self.nats_servers() {
            return bad("nats_url", &why);
        }
        for (key, value) in [
            ("max_live_sessions", self.max_live_sessions as usize),
            ("max_concurrent_turns", self.max_concurrent_turns),
            ("default_timeout_secs", self.default_timeout_secs as usize),
            ("max_timeout_secs", self.max_timeout_secs as usize),
            ("sweep_interval_secs", self.sweep_interval_secs as usize),
            ("worker_heartbeat_secs", self.worker_heartbeat_secs as usize),
            ("max_prompt_bytes", self.max_prompt_bytes),
            ("max_concurrent_runs", self.max_concurrent_runs),
        ] {
            if value == 0 {
                return bad(key, "must be greater than 0");
            }
        }
        // Durations are turned into timestamps; past ten years they overflow or mean nothing.
        const TEN_YEARS: u64 = 10 * 365 * 24 * 3600;
        for (key, value) in [
            ("session_ttl_secs", self.session_ttl_secs),
            ("session_hard_ttl_secs", self.session_hard_ttl_secs),
            ("sweep_interval_secs", self.sweep_interval_secs),
            ("worker_heartbeat_secs", self.worker_heartbeat_secs),
            ("shutdown_grace_secs", self.shutdown_grace_secs),
            ("runs_retention_secs", self.runs_retention_secs),
            ("max_timeout_secs", self.max_timeout_secs),
            ("acpx_ttl_secs", self.acpx_ttl_secs),
        ] {
            if value > TEN_YEARS {
                return bad(key, "must be at most ten years (315360000 seconds)");
            }
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
        Ok(())
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

    /// The default agent and every configured named agent: name → command.
    pub fn agent_table(&self) -> (String, BTreeMap<String, AgentCommand>) {
        let default = AgentCommand::parse(&self.acpx_agent).expect("validated at load");
        let default_name = default_agent_name(&default);
        let mut table: BTreeMap<String, AgentCommand> = self
            .agents
            .iter()
            .map(|(name, spec)| {
                (
                    name.clone(),
                    AgentCommand::parse(spec).expect("validated at load"),
                )
            })
            .collect();
        table.insert(default_name.clone(), default);
        (default_name, table)
    }
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
        assert_eq!(table["claude"], AgentCommand::Builtin("claude".into()));
        assert_eq!(table["codex"], AgentCommand::Builtin("codex".into()));
        assert_eq!(
            table["echo"],
            AgentCommand::Custom("node /x/agent.mjs".into())
        );
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
    fn custom_default_agent_is_named_default() {
        let c =
            Config::load_from(None, &env(&[("ACPX_AGENT", "node /x/agent.mjs --fast")])).unwrap();
        let (default, table) = c.agent_table();
        assert_eq!(default, "default");
        assert_eq!(
            table["default"],
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
