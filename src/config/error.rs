//! The one error a configuration can stop the process with.

use super::env::env_names;
use crate::agent::def::AgentDefError;

/// What stops startup because a setting is unusable. Every one reads `configuration: …` and
/// makes the process exit with [`ConfigError::EXIT_CODE`].
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub(super) String);

impl ConfigError {
    /// The exit code of a process stopped by a configuration error.
    pub const EXIT_CODE: u8 = 2;

    /// An unusable value of `key`, named by its environment variable and its key.
    pub fn setting(key: &str, why: impl std::fmt::Display) -> ConfigError {
        ConfigError(format!("{} {why}", setting_name(key)))
    }
}

impl From<AgentDefError> for ConfigError {
    fn from(e: AgentDefError) -> ConfigError {
        ConfigError(e.to_string())
    }
}

/// How errors name a setting: its short environment variable and its key,
/// e.g. `DB_PATH (db_path)`.
pub fn setting_name(key: &str) -> String {
    let names = env_names(key);
    let env = names.last().expect("every key has an environment name");
    format!("{env} ({key})")
}
