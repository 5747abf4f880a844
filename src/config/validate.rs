//! What a well-typed configuration must also be: numbers in range, lists of names and CIDRs
//! that parse, agents that can run. Each refusal names the variable that set the bad value, or
//! its key.

use super::sources::Layers;
use super::{setting_name, AgentAuth, Config, ConfigError};
use crate::agent::def::{valid_env_name, AgentCommand};

impl Config {
    /// Refuses what deserialisation lets through but the service cannot use; `layers` tell
    /// which variable set a key, so the message names it.
    pub(super) fn validate(&self, layers: &Layers) -> Result<(), ConfigError> {
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
        if let Some(key) = self.zero_setting() {
            return bad(key, "must be greater than 0");
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
        self.validate_app_defaults()
    }

    /// `[app_defaults]`: amounts that are amounts, agents that are configured.
    fn validate_app_defaults(&self) -> Result<(), ConfigError> {
        let defaults = &self.app_defaults;
        defaults
            .check()
            .map_err(|why| ConfigError(format!("app_defaults: {why}")))?;
        let (_, agents) = self.agent_table();
        if let Some(unknown) = defaults
            .agents
            .iter()
            .flatten()
            .find(|a| !agents.contains_key(*a))
        {
            return Err(ConfigError(format!(
                "app_defaults.agents: {unknown:?} is not a configured agent"
            )));
        }
        Ok(())
    }

    /// Every agent usable, and the variable of a key's `auth` given to agents.
    fn validate_agents(&self) -> Result<(), ConfigError> {
        for (name, entry) in &self.agents {
            let def = entry.def(name)?;
            if let Some(AgentAuth::Key { env, .. }) = &def.auth {
                if !self.agent_env.contains(env) {
                    return Err(ConfigError(format!(
                        "agents.{name}.auth.env: {env} is not in {}, so the agent would not get \
                         it: add it there",
                        setting_name("agent_env")
                    )));
                }
            }
        }
        Ok(())
    }

    /// The first setting at 0 that must be more: a count, a size or a period.
    fn zero_setting(&self) -> Option<&'static str> {
        [
            ("max_live_sessions", self.max_live_sessions as usize),
            ("max_concurrent_turns", self.max_concurrent_turns),
            ("default_timeout_secs", self.default_timeout_secs as usize),
            ("max_timeout_secs", self.max_timeout_secs as usize),
            ("sweep_interval_secs", self.sweep_interval_secs as usize),
            ("worker_heartbeat_secs", self.worker_heartbeat_secs as usize),
            ("stream_heartbeat_secs", self.stream_heartbeat_secs as usize),
            (
                "agent_protocol_heartbeat_secs",
                self.agent_protocol_heartbeat_secs as usize,
            ),
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
            ("console_session_secs", self.console_session_secs as usize),
            ("agent_max_file_bytes", self.agent_max_file_bytes as usize),
        ]
        .into_iter()
        .find(|(_, value)| *value == 0)
        .map(|(key, _)| key)
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
            (
                "agent_protocol_heartbeat_secs",
                self.agent_protocol_heartbeat_secs,
            ),
            ("shutdown_grace_secs", self.shutdown_grace_secs),
            ("runs_retention_secs", self.runs_retention_secs),
            ("max_timeout_secs", self.max_timeout_secs),
            ("acpx_ttl_secs", self.acpx_ttl_secs),
            ("agent_idle_secs", self.agent_idle_secs),
            ("permission_timeout_secs", self.permission_timeout_secs),
            ("http_header_timeout_secs", self.http_header_timeout_secs),
            ("http_idle_timeout_secs", self.http_idle_timeout_secs),
            ("console_session_secs", self.console_session_secs),
        ]
        .into_iter()
        .find(|(_, value)| *value > TEN_YEARS)
        .map(|(key, _)| key)
    }
}
