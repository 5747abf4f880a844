//! The serde types of the wire contract (subjects.md), shared by the worker, the sidecar and the
//! client. Requests reject unknown fields; replies are plain data.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, ErrorKind};

mod apps;
pub use apps::{
    AppRef, LimitUsage, Policy, PolicyFields, PolicyList, PolicySet, Source, Usage, UsageAsked,
    UsageDay, UsageDays,
};

/// NATS subjects of the contract.
pub mod subject {
    pub const SESSION_CREATE: &str = "forge.session.create";
    pub const SESSION_TURN: &str = "forge.session.turn";
    pub const SESSION_CLOSE: &str = "forge.session.close";
    pub const SESSION_CANCEL: &str = "forge.session.cancel";
    pub const SESSION_EVENTS: &str = "forge.session.events";
    pub const SESSION_PERMISSION: &str = "forge.session.permission";
    pub const SESSION_GET: &str = "forge.session.get";
    pub const SESSION_LIST: &str = "forge.session.list";
    pub const RUN: &str = "forge.run";
    pub const TOKEN_CREATE: &str = "forge.admin.token.create";
    pub const TOKEN_LIST: &str = "forge.admin.token.list";
    pub const TOKEN_REVOKE: &str = "forge.admin.token.revoke";
    pub const HEALTH: &str = "forge.health";
    pub const APP_SET: &str = "forge.admin.app.set";
    pub const APP_GET: &str = "forge.admin.app.get";
    pub const APP_LIST: &str = "forge.admin.app.list";
    pub const USAGE: &str = "forge.usage";
    pub const ADMIN_USAGE: &str = "forge.admin.usage";
    pub const ADMIN_SESSION_LIST: &str = "forge.admin.session.list";
}

/// A worker's own subject for `subject` (`forge.session.turn` → `forge.worker.<id>.session.turn`),
/// the id's characters that a subject token cannot hold
/// written as `_`.
pub fn worker_subject(worker_id: &str, subject: &str) -> String {
    let token: String = worker_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let rest = subject.strip_prefix("forge.").unwrap_or(subject);
    format!("forge.worker.{token}.{rest}")
}

/// The NATS micro service name and queue group.
pub const SERVICE_NAME: &str = "clawdforge";
pub const QUEUE_GROUP: &str = "forge";

pub const AUTHORIZATION: &str = "Authorization";
/// A request header: `1` asks for the reply as a stream of events (contract v2).
pub const STREAM_HEADER: &str = "Forge-Stream";
/// A reply header of a streamed reply: what the message is (an event type, `heartbeat`,
/// `turn`, `run` or `error`).
pub const EVENT_HEADER: &str = "Forge-Event";
pub const ERROR_HEADER: &str = "Nats-Service-Error";
/// A request header between workers: the caller's reply subject of a request passed on.
pub const REPLY_TO_HEADER: &str = "Forge-Reply-To";
pub const ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";

/// An attached file: a plain name and its content in standard base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileUpload {
    pub name: String,
    pub content_base64: String,
}

/// A request with no fields: `{}` (an empty body is read as `{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileUpload>,
    /// A name for the session (v3.3): 1-63 of `a-z`, `0-9`, `_`, `-`, unique among the app's
    /// open sessions of the agent (`conflict` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TurnRequest {
    pub session_id: String,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileUpload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// `false`: answer as soon as the turn is taken and numbered ([`TurnAccepted`]); the turn
    /// goes on as if the caller waited. Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<bool>,
}

/// `forge.session.close` and `forge.session.get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRef {
    pub session_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileUpload>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    pub app: String,
    #[serde(default)]
    pub admin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRevoke {
    pub token_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Open,
    Closed,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Open => "open",
            SessionStatus::Closed => "closed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Session {
    pub session_id: String,
    pub app: String,
    pub agent: String,
    pub status: SessionStatus,
    pub created_at: String,
    pub last_turn_at: Option<String>,
    pub closed_at: Option<String>,
    pub turns: u64,
    /// The number of the turn running now, or null.
    pub running_turn: Option<u64>,
    /// The session's name (v3.3), when it was created with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The reply of a turn asked with `"wait": false`: its number, and whether it waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TurnAccepted {
    pub session_id: String,
    pub turn: u64,
    pub status: TurnStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TurnStatus {
    /// It waits for the session's earlier turn or for a slot.
    Queued,
    /// It starts at once.
    Running,
}

/// `forge.session.events`: which turn (default the latest) and from after which `seq`
/// (default from the start).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsRequest {
    pub session_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<Session>,
}

/// `forge.admin.session.list` (v3.5): every app's sessions, those matching each filter given,
/// newest first, a page of them.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, utoipa::IntoParams,
)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SessionsAsked {
    /// Only this app's sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Only sessions of this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Only open, or only closed, sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SessionStatus>,
    /// How many matching sessions to skip (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// How many to answer at most (default 50, at most 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

/// A page of [`SessionsAsked`]: the sessions and how many match in all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionPage {
    pub sessions: Vec<Session>,
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Turn {
    pub session_id: String,
    pub turn: u64,
    pub output: String,
    pub stop_reason: String,
    pub duration_ms: u64,
}

/// One event of a live turn (contract v2): where it belongs, its number, when, and what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<u64>,
    /// A run's events carry its id instead of a session and turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// From 1 within the turn, with no gaps; the same when the event is replayed.
    pub seq: u64,
    pub at: String,
    #[serde(flatten)]
    pub body: EventBody,
}

impl EventBody {
    /// The event's `type`, as the `Forge-Event` header and SSE's `event:` name it.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::Message { .. } => "message",
            EventBody::Thought { .. } => "thought",
            EventBody::ToolCall { .. } => "tool_call",
            EventBody::ToolCallUpdate { .. } => "tool_call_update",
            EventBody::Plan { .. } => "plan",
            EventBody::Usage { .. } => "usage",
            EventBody::Permission { .. } => "permission",
            EventBody::PermissionRequest { .. } => "permission_request",
            EventBody::Notice { .. } => "notice",
            EventBody::Unknown => "unknown",
        }
    }
}

/// What an event of a live turn says (contract v2), tagged by `type`. Clients ignore types
/// they do not know: they read as `Unknown`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// A chunk of the agent's answer; the Turn's `output` is these texts joined.
    Message { text: String },
    /// A chunk of the agent's reasoning.
    Thought { text: String },
    /// The agent started a tool call.
    ToolCall {
        tool_call_id: String,
        title: String,
        kind: Option<String>,
        status: Option<String>,
        /// The paths the call touches.
        locations: Vec<String>,
    },
    /// A tool call changed: whichever of `title` and `status` did.
    ToolCallUpdate {
        tool_call_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
    },
    /// The agent's plan, whole, as it stands now.
    Plan { entries: Vec<PlanEntry> },
    /// How much of its context the agent has used, and what it cost.
    Usage {
        used: Option<u64>,
        size: Option<u64>,
        cost_usd: Option<f64>,
    },
    /// A permission the agent asked for, and how it was decided.
    Permission {
        title: Option<String>,
        tool_call_id: Option<String>,
        decision: PermissionDecision,
        by: DecidedBy,
    },
    /// A permission the policy (`ask`) leaves to the caller: answer it with
    /// `forge.session.permission` and one of the options' ids.
    PermissionRequest {
        request_id: String,
        title: Option<String>,
        tool_call_id: Option<String>,
        options: Vec<PermissionOption>,
    },
    /// The gateway's own word about the turn.
    Notice { text: String },
    /// A type this version does not know.
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlanEntry {
    pub content: String,
    pub priority: Option<String>,
    pub status: Option<String>,
}

/// One answer a permission request offers, as the agent put it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PermissionOption {
    pub option_id: String,
    pub name: String,
    /// ACP's kind: `allow_once`, `allow_always`, `reject_once` or `reject_always`.
    pub kind: String,
}

/// `forge.session.permission`: the caller's answer to a `permission_request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PermissionAnswer {
    pub session_id: String,
    pub request_id: String,
    pub option_id: String,
}

/// The reply of `forge.session.permission`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PermissionAnswered {
    pub session_id: String,
    pub request_id: String,
    /// False when that request is no longer waiting (answered, timed out or cancelled).
    pub accepted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PermissionDecision {
    Allowed,
    Rejected,
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecidedBy {
    Policy,
    Caller,
    Timeout,
}

/// The reply of `forge.session.cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Cancelled {
    pub session_id: String,
    /// A turn of the session was running or about to start, and has been told to stop.
    pub cancelled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionClosed {
    pub session_id: String,
    pub closed: bool,
    pub already_closed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Run {
    pub run_id: String,
    pub ok: bool,
    pub result: Option<String>,
    pub error: Option<String>,
    pub model: String,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub cost_usd: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    pub token_id: String,
    pub app: String,
    pub admin: bool,
    pub token: String,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub token_id: String,
    pub app: String,
    pub admin: bool,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenRevoked {
    pub token_id: String,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub ok: bool,
    pub version: String,
    pub worker_id: String,
    pub acpx_present: bool,
    pub acpx_version: Option<String>,
    pub claude_present: bool,
    pub open_sessions: u64,
    /// Whether this worker can write the ledger (the file it opened is still in place and
    /// writable); `ok` is false when it cannot.
    #[serde(default = "writable_by_default")]
    pub ledger_writable: bool,
    /// Whether this worker's agent processes run under Landlock (`agent_confinement`).
    #[serde(default)]
    pub confined: bool,
    /// The kernel's Landlock ABI version; null when it has no Landlock.
    #[serde(default)]
    pub landlock_abi: Option<u32>,
    /// Whether each configured agent starts and opens a session, as last checked (at the
    /// worker's start, then at most every few minutes); empty until the first check is done.
    #[serde(default)]
    pub agents: Vec<AgentHealth>,
}

/// One configured agent in Health: whether it answered `initialize` and `session/new` when
/// the worker last started it (no prompt, so no model call), and what it said of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentHealth {
    pub name: String,
    pub backend: crate::config::BackendKind,
    pub ready: bool,
    /// Why it is not ready: the message a session of it would fail with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The name and version it gave in `agentInfo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The ACP version it answered `initialize` with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u16>,
    /// The ids of the authentication methods it offers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_methods: Option<Vec<String>>,
}

/// A Health from a worker before `ledger_writable` existed said nothing: it could write.
fn writable_by_default() -> bool {
    true
}

/// The body of every error reply: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorKind,
    pub message: String,
    /// `quota_exceeded`: the policy field whose limit refused the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// `quota_exceeded`, where the limit frees with time: seconds until it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

impl From<&Error> for ErrorBody {
    fn from(err: &Error) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: err.kind,
                message: err.message.clone(),
                limit: err.limit.clone(),
                retry_after_secs: err.retry_after_secs,
            },
        }
    }
}

impl From<ErrorBody> for Error {
    fn from(body: ErrorBody) -> Self {
        let mut err = Error::new(body.error.code, body.error.message);
        err.limit = body.error.limit;
        err.retry_after_secs = body.error.retry_after_secs;
        err
    }
}

/// Decodes a request body. An empty body reads as `{}`; anything that is not the expected JSON
/// object is `bad_request`, with serde's reason.
pub fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let body: &[u8] = match first {
        None => b"{}",
        Some(b'{') => body,
        // serde reads a struct from a JSON array too; the contract wants an object.
        Some(_) => {
            return Err(Error::bad_request(
                "invalid request body: expected a JSON object",
            ))
        }
    };
    serde_json::from_slice(body)
        .map_err(|e| Error::bad_request(format!("invalid request body: {e}")))
}

/// Reads the bearer token out of an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_rejects_unknown_fields() {
        let err = decode::<SessionRef>(br#"{"session_id":"x","extra":1}"#).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadRequest);
        assert!(err.message.contains("extra"), "{}", err.message);
    }

    #[test]
    fn decode_reads_empty_body_as_empty_object() {
        assert_eq!(decode::<Empty>(b"").unwrap(), Empty {});
        assert_eq!(
            decode::<CreateSession>(b" \n").unwrap(),
            CreateSession::default()
        );
        assert!(decode::<SessionRef>(b"").is_err());
    }

    #[test]
    fn decode_rejects_garbage() {
        for body in [
            &b"\xff\xfe"[..],
            b"[1,2]",
            b"null",
            b"{\"session_id\":5}",
            b"{",
        ] {
            let err = decode::<SessionRef>(body).unwrap_err();
            assert_eq!(err.kind, ErrorKind::BadRequest);
        }
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(Some("abc")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn error_body_shape() {
        let body = ErrorBody::from(&Error::not_found("no such session"));
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"error": {"code": "not_found", "message": "no such session"}})
        );
    }
}
