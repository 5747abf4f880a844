//! How one acpx call failed, and what acpx's JSON-RPC error lines say.

use serde_json::Value;

use crate::agent::backend::AgentError;

/// How one acpx call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    Spawn(String),
    Timeout,
    /// acpx has no record of the session (its state directory was wiped).
    NoSession,
    /// acpx's queue owner for the session did not bind its socket in acpx's start-up window
    /// (about 6 s; a loaded machine starting many at once). It goes on starting: the prompt was
    /// never queued, so it can be sent again.
    OwnerNotUp(String),
    Agent(String),
}

impl Failure {
    pub(super) fn into_agent_error(self, bin: &str) -> AgentError {
        match self {
            Failure::Spawn(reason) => AgentError::Unavailable {
                program: bin.to_string(),
                reason,
            },
            Failure::Timeout => AgentError::Timeout,
            Failure::NoSession => AgentError::Failed("acpx has no record of the session".into()),
            Failure::OwnerNotUp(m) => AgentError::Failed(m),
            Failure::Agent(m) => AgentError::Failed(m),
        }
    }
}

/// The message of a JSON-RPC error line, with acpx's code when it gives one.
pub(super) fn error_message(v: &Value) -> Option<String> {
    let err = v.get("error")?;
    let message = err["message"].as_str().unwrap_or("unknown error");
    match err["data"]["acpxCode"].as_str() {
        Some(code) => Some(format!("{code}: {message}")),
        None => Some(message.to_string()),
    }
}
