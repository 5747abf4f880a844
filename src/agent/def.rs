//! What describes an agent: its command, the backend that drives it, who answers its
//! permissions and how it authenticates; both as the config writes it ([`AgentEntry`]) and as
//! the worker uses it ([`AgentDef`]).

use serde::{Deserialize, Serialize};

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

/// Why an agent of the config is unusable: the setting (`agents.NAME…`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {why}")]
pub struct AgentDefError {
    pub key: String,
    pub why: String,
}

impl AgentDefError {
    fn new(key: impl Into<String>, why: impl Into<String>) -> AgentDefError {
        AgentDefError {
            key: key.into(),
            why: why.into(),
        }
    }
}

impl AgentEntry {
    /// The agent this entry defines under `name`, or why it is unusable. Whether the worker can
    /// give the agent its key's variable is the config's to check (`agent_env`).
    pub fn def(&self, name: &str) -> Result<AgentDef, AgentDefError> {
        if !valid_agent_name(name) {
            return Err(AgentDefError::new(
                format!("agents.{name}"),
                "an agent name is 1-64 letters, digits, '-', '_' or '.'",
            ));
        }
        let (spec, backend, permissions) = self.parts();
        let key = match self {
            AgentEntry::Command(_) => format!("agents.{name}"),
            AgentEntry::Table { .. } => format!("agents.{name}.command"),
        };
        let command = AgentCommand::parse(spec).map_err(|why| AgentDefError::new(&key, why))?;
        if backend == BackendKind::Acp {
            if let AgentCommand::Builtin(b) = &command {
                if command.acp_argv().is_none() {
                    return Err(AgentDefError::new(
                        key,
                        format!(
                            "{b:?} is not an agent the acp backend knows by name \
                             (claude, codex, gemini); give its command line"
                        ),
                    ));
                }
            }
        }
        if backend == BackendKind::Acpx && permissions == PermissionPolicy::Ask {
            return Err(AgentDefError::new(
                format!("agents.{name}.permissions"),
                "\"ask\" needs backend = \"acp\" (acpx answers permissions itself)",
            ));
        }
        let auth = match self.auth() {
            Some(auth) => Some(auth.for_backend(&format!("agents.{name}.auth"), backend)?),
            None => None,
        };
        Ok(AgentDef {
            command,
            backend,
            permissions,
            auth,
        })
    }

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
    /// The typed `auth` of an agent driven by `backend` (`key`: how messages name this `auth`).
    fn for_backend(&self, key: &str, backend: BackendKind) -> Result<AgentAuth, AgentDefError> {
        if backend == BackendKind::Acpx {
            return Err(AgentDefError::new(
                key,
                "needs backend = \"acp\" (acpx authenticates by itself, from \
                 ACPX_AUTH_<METHOD> variables named in agent_env: see docs/agents.md)",
            ));
        }
        self.parse(key)
    }

    /// The typed `auth`, or why it is unusable (`key`: how messages name this table's `auth`).
    pub fn parse(&self, key: &str) -> Result<AgentAuth, AgentDefError> {
        let bad = |field: &str, why: String| AgentDefError::new(format!("{key}.{field}"), why);
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

    fn gateway(
        &self,
        bad: &dyn Fn(&str, String) -> AgentDefError,
    ) -> Result<AgentAuth, AgentDefError> {
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
    bad: &dyn Fn(&str, String) -> AgentDefError,
    field: &str,
    value: Option<&str>,
    method: &str,
) -> Result<String, AgentDefError> {
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
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
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
pub fn valid_env_name(name: &str) -> bool {
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
