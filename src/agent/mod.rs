//! The agent backends, behind one trait: open a session, prompt it (typed events into a sink,
//! a cancellation, a deadline), cancel, close. acpx is the first backend; `claude -p` runs
//! one-shot runs. The only module that spawns processes.

pub mod acp;
pub mod acpx;
pub mod check;
pub mod claude;
pub mod confine;
pub mod fault;
mod permission;
pub mod process;
mod updates;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentAuth, AgentCommand, BackendKind, PermissionPolicy};
use crate::wire::EventBody;

pub use acp::Acp;
pub use acpx::Acpx;
pub use claude::{Claude, ClaudeError, ClaudeOptions, ClaudeResult, RunOutput};
pub use confine::{app_dir_name, ConfineError, ConfineSettings, Confinement};

/// Below the sessions' root, where the native backend's sessions live, one directory per app.
pub const APPS_DIR: &str = "apps";

/// Whether an attached file may not have this name: a file an agent runner would read as its
/// own configuration from the session's directory.
pub fn reserved_file_name(name: &str) -> bool {
    acpx::reads_from_cwd(name)
}

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
    Fault(Box<fault::AgentFault>),
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

/// The backends of sessions, each session sent to the one its agent is configured with.
#[derive(Debug, Clone)]
pub struct Backends {
    pub acpx: Acpx,
    pub acp: Acp,
}

impl Backends {
    fn of(&self, s: &AgentSession) -> &dyn Backend {
        match s.backend {
            BackendKind::Acpx => &self.acpx,
            BackendKind::Acp => &self.acp,
        }
    }
}

#[async_trait::async_trait]
impl Backend for Backends {
    fn name(&self) -> &'static str {
        "acpx+acp"
    }

    /// acpx's version: the one runner health reports.
    async fn version(&self) -> Result<String, AgentError> {
        self.acpx.version().await
    }

    async fn open(&self, session: &AgentSession) -> Result<Opened, AgentError> {
        self.of(session).open(session).await
    }

    async fn prompt(
        &self,
        session: &AgentSession,
        prompt: Prompt<'_>,
    ) -> Result<TurnEnd, AgentError> {
        self.of(session).prompt(session, prompt).await
    }

    async fn cancel(&self, session: &AgentSession) -> Result<bool, AgentError> {
        self.of(session).cancel(session).await
    }

    async fn close(&self, session: &AgentSession) -> Result<(), AgentError> {
        self.of(session).close(session).await
    }

    async fn forget(&self, session: &AgentSession) -> Result<(), AgentError> {
        self.of(session).forget(session).await
    }

    async fn answer(
        &self,
        session: &AgentSession,
        request_id: &str,
        option_id: &str,
    ) -> Result<Answer, AgentError> {
        self.of(session)
            .answer(session, request_id, option_id)
            .await
    }
}
