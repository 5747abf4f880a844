//! The environment: the variables that set each key (`CLAWDFORGE_<KEY>` and the old service's
//! names), secrets read from the file a `<NAME>_FILE` variable names, and each value typed as
//! its key's default is.

use figment::providers::Serialized;
use figment::value::{Dict, Map};
use figment::{Metadata, Profile, Provider};

use super::{Config, ConfigError};

/// Environment variables and the key each sets. `CLAWDFORGE_<KEY>` works for every key; these are
/// the old service's names (and the short names docs/configuration.md uses), kept as aliases.
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
    ("METRICS_ADDR", "metrics_addr"),
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
        "agent_protocol",
        "agent_protocol_heartbeat_secs",
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
        "console_session_secs",
        "console_secure_cookie",
        "metrics_addr",
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

/// One variable's value for one key, as a figment provider: its metadata names the variable
/// (as [`figment::Source::Custom`]), so the figment tells which variable set a key and which
/// one a bad value came from.
pub(super) struct EnvVar {
    key: &'static str,
    name: String,
    value: String,
}

impl Provider for EnvVar {
    fn metadata(&self) -> Metadata {
        let name = format!("environment variable {}", self.name);
        Metadata::from(name, figment::Source::Custom(self.name.clone()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::default(self.key, env_value(self.key, &self.value)).data()
    }
}

/// The variables of `env` that set keys, in the order they are merged: a key's aliases before
/// its `CLAWDFORGE_` name, so that name wins when both are set. A secret's `<NAME>_FILE` stands
/// for `<NAME>`.
pub(super) fn env_vars(env: &[(String, String)]) -> Result<Vec<EnvVar>, ConfigError> {
    let mut vars = Vec::new();
    for key in env_keys() {
        for name in env_names(key).into_iter().rev() {
            let value = env.iter().find(|(k, _)| *k == name).map(|(_, v)| v);
            if SECRET_KEYS.contains(&key) {
                if let Some(secret) = secret_file(env, &name, value.is_some())? {
                    let name = format!("{name}_FILE");
                    vars.push(EnvVar {
                        key,
                        name,
                        value: secret,
                    });
                    continue;
                }
            }
            if let Some(value) = value {
                let value = value.clone();
                vars.push(EnvVar { key, name, value });
            }
        }
    }
    Ok(vars)
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
