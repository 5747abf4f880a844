//! The one error type of the domain, and the stable table that maps each kind to its wire code
//! and status. Both transports use this table; nothing else decides a status.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The error kinds of the wire contract (subjects.md). Their names and statuses never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    PayloadTooLarge,
    AgentError,
    AtCapacity,
    Timeout,
    Internal,
    /// Contract v3: a limit of the app's policy.
    QuotaExceeded,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::BadRequest,
        ErrorKind::Unauthorized,
        ErrorKind::Forbidden,
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::PayloadTooLarge,
        ErrorKind::AgentError,
        ErrorKind::AtCapacity,
        ErrorKind::Timeout,
        ErrorKind::Internal,
        ErrorKind::QuotaExceeded,
    ];

    /// The HTTP status, also sent as `Nats-Service-Error-Code` over NATS.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::QuotaExceeded => 429,
            ErrorKind::Internal => 500,
            ErrorKind::AgentError => 502,
            ErrorKind::AtCapacity => 503,
            ErrorKind::Timeout => 504,
        }
    }

    /// The `code` string of the error body.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::AgentError => "agent_error",
            ErrorKind::AtCapacity => "at_capacity",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal",
            ErrorKind::QuotaExceeded => "quota_exceeded",
        }
    }

    pub fn from_code(code: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.code() == code)
    }

    pub fn from_status(status: u16) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.status() == status)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// An error of the contract: a kind and a message that is safe to show the caller; for
/// `quota_exceeded`, the limit and when to try again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    pub limit: Option<String>,
    pub retry_after_secs: Option<u64>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            limit: None,
            retry_after_secs: None,
        }
    }

    /// Work an app's limit refused.
    pub fn quota(refusal: &crate::quota::Refusal) -> Self {
        Error {
            limit: Some(refusal.limit.name().to_string()),
            retry_after_secs: refusal.retry_after_secs,
            ..Error::new(ErrorKind::QuotaExceeded, refusal.message.clone())
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::BadRequest, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Conflict, message)
    }

    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::PayloadTooLarge, message)
    }

    /// An agent's failure. Its text comes from the agent or its CLI (a JSON-RPC message, a
    /// line of stderr), so it is clipped to [`MAX_AGENT_MESSAGE`] bytes.
    pub fn agent(message: impl Into<String>) -> Self {
        Error::new(
            ErrorKind::AgentError,
            clip(&message.into(), MAX_AGENT_MESSAGE),
        )
    }

    pub fn at_capacity(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::AtCapacity, message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Timeout, message)
    }

    /// An internal failure: the cause goes to the log, the caller sees a generic message.
    pub fn internal(cause: impl fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Error::new(ErrorKind::Internal, "internal error")
    }
}

/// The longest `agent_error` message a caller gets.
pub const MAX_AGENT_MESSAGE: usize = 1000;

/// `s` cut to at most `max` bytes on a character boundary, with `…` when it was cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    // The ellipsis counts: the result is at most `max` bytes.
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_round_trip() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_code(kind.code()), Some(kind));
            assert_eq!(ErrorKind::from_status(kind.status()), Some(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.code()));
        }
    }

    #[test]
    fn messages_are_clipped_on_char_boundaries() {
        assert_eq!(clip("héllo", 5), "h…");
        let long = "é".repeat(1000);
        for max in 3..40 {
            assert!(clip(&long, max).len() <= max, "clip to {max} went over");
        }
        assert_eq!(clip("abc", 3), "abc");
        let long = "é".repeat(MAX_AGENT_MESSAGE);
        let message = Error::agent(long.as_str()).message;
        assert!(
            message.len() <= MAX_AGENT_MESSAGE + "…".len(),
            "{}",
            message.len()
        );
        assert!(message.ends_with('…') && long.starts_with(message.trim_end_matches('…')));
    }

    #[test]
    fn table_matches_contract() {
        let table: Vec<(&str, u16)> = ErrorKind::ALL
            .iter()
            .map(|k| (k.code(), k.status()))
            .collect();
        assert_eq!(
            table,
            vec![
                ("bad_request", 400),
                ("unauthorized", 401),
                ("forbidden", 403),
                ("not_found", 404),
                ("conflict", 409),
                ("payload_too_large", 413),
                ("agent_error", 502),
                ("at_capacity", 503),
                ("timeout", 504),
                ("internal", 500),
                ("quota_exceeded", 429),
            ]
        );
    }
}
