//! What every backend is and speaks: the [`Backend`] trait, a session as a backend sees it, a
//! prompt and how its turn ended, and why a call failed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::fault::AgentFault;
use crate::agent::def::{AgentAuth, AgentCommand, BackendKind, PermissionPolicy};
use crate::wire::EventBody;

/// How long a backend gives a cancelled turn to answer `cancelled` before it stops the agent's
/// process and ends the turn itself with what it had: a cancelled turn ends within this.
pub const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// Why an agent call failed, in the terms the domain needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The backend's program cannot be started on this worker.
    #[error("cannot start {program}: {reason}")]
    Unavailable { program: String, reason: String },
    /// The turn did not end by its deadline; it has been cancelled.
    #[error("the turn did not finish within its timeout")]
    Timeout,
    /// The agent or its runner failed; the message quotes it.
    #[error("{0}")]
    Failed(String),
    /// The agent could not be started, ended, or wants credentials: said with its name.
    #[error("{0}")]
    Fault(Box<AgentFault>),
}

/// How a turn ended, as ACP's `stopReason` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    EndTurn,
    MaxTokens,
    MaxTurnRequests,
    Refusal,
    Cancelled,
    /// A reason this version does not know, passed on as the agent said it.
    Other(String),
}

impl StopReason {
    pub fn parse(s: &str) -> StopReason {
        match s {
            "end_turn" => StopReason::EndTurn,
            "max_tokens" => StopReason::MaxTokens,
            "max_turn_requests" => StopReason::MaxTurnRequests,
            "refusal" => StopReason::Refusal,
            "cancelled" => StopReason::Cancelled,
            other => StopReason::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            StopReason::EndTurn => "end_turn",
            StopReason::MaxTokens => "max_tokens",
            StopReason::MaxTurnRequests => "max_turn_requests",
            StopReason::Refusal => "refusal",
            StopReason::Cancelled => "cancelled",
            StopReason::Other(s) => s,
        }
    }
}

/// A turn that ended: the agent's message text (the `message` events joined, cut at the
/// backend's limit with a note) and why it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnEnd {
    pub output: String,
    pub stop_reason: StopReason,
}

/// What a backend needs to reach one session again: our id, the app it belongs to (whose home
/// its agent runs in), its directory, the agent command, and whatever the backend asked the
/// ledger to keep for it at open (`state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSession {
    pub id: String,
    pub app: String,
    /// The configured agent's name, for messages.
    pub agent: String,
    pub cwd: PathBuf,
    pub command: AgentCommand,
    pub backend: BackendKind,
    pub permissions: PermissionPolicy,
    /// How the native backend authenticates its agent when the agent asks.
    pub auth: Option<AgentAuth>,
    pub state: Option<String>,
}

/// What opening a session gave: the backend's own state to keep with the session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opened {
    pub state: Option<String>,
}

/// Where a backend puts a turn's events, in order, as they happen. A full sink slows the agent
/// down rather than losing events; a sink nobody reads any more is ignored.
#[derive(Debug, Clone)]
pub struct EventSink(mpsc::Sender<EventBody>);

impl EventSink {
    /// A sink and the receiver of its events, holding up to `capacity` unread.
    pub fn channel(capacity: usize) -> (EventSink, mpsc::Receiver<EventBody>) {
        let (tx, rx) = mpsc::channel(capacity);
        (EventSink(tx), rx)
    }

    pub async fn emit(&self, event: EventBody) {
        let _ = self.0.send(event).await;
    }
}

/// One prompt: the text, where its events go, what stops it early, and when it must be over.
pub struct Prompt<'a> {
    pub text: &'a str,
    /// The turn's number in its session (1, 2, …).
    pub turn: u64,
    /// Dropped when the turn is over, which tells the reader of the events.
    pub sink: EventSink,
    /// Cancelled: the agent is told to stop, and the turn ends with `StopReason::Cancelled` and
    /// the output so far.
    pub cancel: &'a CancellationToken,
    /// Past this the turn is cancelled and answers `AgentError::Timeout`.
    pub deadline: Instant,
    /// Whether someone follows the turn's events as they come: only then can a permission
    /// that the policy leaves to the caller (`ask`) be asked; otherwise it is rejected.
    pub followed: bool,
}

/// What became of a caller's answer to a permission request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The request was waiting; the agent has the answer.
    Taken,
    /// No such request is waiting (answered, timed out, cancelled, or never asked).
    NotWaiting,
    /// The request offers other options than the one answered.
    UnknownOption { offered: Vec<String> },
}

/// A backend that runs multi-turn agent sessions.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// The backend's name, for logs and health.
    fn name(&self) -> &'static str;
    /// The version of the runner, when it can be started.
    async fn version(&self) -> Result<String, AgentError>;
    /// Makes a new agent session.
    async fn open(&self, session: &AgentSession) -> Result<Opened, AgentError>;
    /// Runs one turn.
    async fn prompt(
        &self,
        session: &AgentSession,
        prompt: Prompt<'_>,
    ) -> Result<TurnEnd, AgentError>;
    /// Stops the running turn of a session, wherever it was started; `true` if one ran.
    async fn cancel(&self, session: &AgentSession) -> Result<bool, AgentError>;
    /// Ends the agent session; closing a session that is already closed is not an error.
    async fn close(&self, session: &AgentSession) -> Result<(), AgentError>;
    /// Removes what the backend keeps of a closed session for good.
    async fn forget(&self, session: &AgentSession) -> Result<(), AgentError>;
    /// The agent processes this backend holds now, by backend name (a backend whose agents
    /// another program runs, as acpx's queue owners do, holds none).
    fn agent_processes(&self) -> Vec<(&'static str, usize)> {
        Vec::new()
    }
    /// The caller's answer to permission request `request_id` of the session's running turn.
    async fn answer(
        &self,
        _session: &AgentSession,
        _request_id: &str,
        _option_id: &str,
    ) -> Result<Answer, AgentError> {
        Ok(Answer::NotWaiting)
    }
}

impl AgentFault {
    /// The fault as an [`AgentError`], with the agent's stderr tail logged once, at warn.
    pub fn report(self, stderr: &str) -> AgentError {
        if stderr.is_empty() {
            tracing::warn!(agent = %self.agent.name, "{self}");
        } else {
            tracing::warn!(agent = %self.agent.name, stderr = %stderr, "{self}");
        }
        AgentError::Fault(Box::new(self))
    }
}
