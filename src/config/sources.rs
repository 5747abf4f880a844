//! The layers a configuration is merged from (defaults, the file, the environment) and, from
//! figment's metadata of each value, where it came from: for `clawdforge config` and for
//! messages that name the variable or the file a bad value was read from.

use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;

use super::env::{env_vars, SECRET_KEYS};
use super::{Config, ConfigError, DEFAULT_CONFIG_FILE};

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

/// The layers a configuration is read from: the file (if any) and the environment's values,
/// merged in that order over the defaults.
pub(super) struct Layers {
    file: Option<PathBuf>,
    figment: Figment,
}

impl Layers {
    /// The file to read and the environment's values, merged over the defaults; an error when
    /// a named file is missing or a secret's file unusable.
    pub(super) fn read(
        file: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Layers, ConfigError> {
        let file = config_file(file, env)?;
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &file {
            figment = figment.merge(Toml::file_exact(path));
        }
        for var in env_vars(env)? {
            figment = figment.merge(var);
        }
        Ok(Layers { file, figment })
    }

    /// The configuration these layers give, before [`Config::validate`].
    pub(super) fn extract(&self) -> Result<Config, ConfigError> {
        self.figment.extract().map_err(|e| self.extract_error(e))
    }

    /// The variable that set `key`, if one did (the last one merged wins).
    pub(super) fn env_name(&self, key: &str) -> Option<&str> {
        match self.figment.find_metadata(key)?.source.as_ref()? {
            figment::Source::Custom(name) => Some(name),
            _ => None,
        }
    }

    /// Where `key` came from.
    fn source(&self, key: &str) -> Source {
        let metadata = self.figment.find_metadata(key);
        match metadata.and_then(|m| m.source.as_ref()) {
            Some(figment::Source::Custom(name)) => Source::Env(name.clone()),
            Some(figment::Source::File(path)) => Source::File(path.clone()),
            _ => Source::Default,
        }
    }

    /// Every key of `config` with its value (secrets masked) and its source.
    pub(super) fn explain(&self, config: &Config) -> Vec<Shown> {
        let values = serde_json::to_value(config).expect("config serializes");
        values
            .as_object()
            .expect("config is a table")
            .iter()
            .map(|(key, value)| Shown {
                key: key.clone(),
                value: shown_value(key, value),
                source: self.source(key),
            })
            .collect()
    }

    /// A figment error, naming the variable or the file the bad value came from.
    fn extract_error(&self, e: figment::Error) -> ConfigError {
        let key = e.path.first().cloned().unwrap_or_default();
        let variable = match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
            Some(figment::Source::Custom(name)) if !key.is_empty() => Some(name),
            _ => None,
        };
        let source = match (variable, &self.file) {
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

/// The file to read: `file`, else the one `CLAWDFORGE_CONFIG` names (either must exist), else
/// [`DEFAULT_CONFIG_FILE`] when it exists.
fn config_file(
    file: Option<&Path>,
    env: &[(String, String)],
) -> Result<Option<PathBuf>, ConfigError> {
    let named = file.map(Path::to_path_buf).or_else(|| {
        env.iter()
            .find(|(k, _)| k == "CLAWDFORGE_CONFIG")
            .map(|(_, v)| PathBuf::from(v))
    });
    match named {
        Some(path) if !path.is_file() => Err(ConfigError(format!(
            "config file {} does not exist",
            path.display()
        ))),
        Some(path) => Ok(Some(path)),
        None => Ok(Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.is_file())),
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
