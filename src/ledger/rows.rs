//! The values the ledger takes and gives: its rows, and what its writes answer.

use sha2::{Digest, Sha256};

use super::outcome::{EventOutcome, RunOutcome};
use crate::values::{RunId, SessionId, Timestamp, TokenId, WaitId};

/// Text as the ledger keeps it: the text itself unless only sizes and hashes are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub text: Option<String>,
    pub bytes: i64,
    pub sha256: String,
}

impl Recorded {
    pub fn of(text: &str, keep_text: bool) -> Recorded {
        Recorded {
            text: keep_text.then(|| text.to_string()),
            bytes: text.len() as i64,
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub token_id: TokenId,
    pub app: String,
    pub admin: bool,
    pub token_hash: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// Which sessions [`Sessions::sessions_matching`](super::Sessions::sessions_matching) reads:
/// those matching each filter given, a page of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    pub app: Option<String>,
    pub agent: Option<String>,
    /// `Some(true)`: open ones only; `Some(false)`: closed ones only.
    pub open: Option<bool>,
    pub offset: u64,
    pub limit: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub session_id: SessionId,
    pub app: String,
    pub agent: String,
    pub agent_command: String,
    pub cwd: String,
    pub open: bool,
    pub created_at: Timestamp,
    pub last_turn_at: Option<Timestamp>,
    pub closed_at: Option<Timestamp>,
    pub turns: u64,
    /// Files attached at create, not yet listed ahead of a turn.
    pub pending_files: Vec<String>,
    /// What the agent backend keeps with the session (acpx: its record id).
    pub agent_state: Option<String>,
    /// The number of the turn running now, if one is (read only; never written from here).
    pub running_turn: Option<u64>,
    /// Its name, unique among the open sessions of its app and agent, if it was given one.
    pub name: Option<String>,
}

/// Who writes, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub worker_id: String,
    pub at: Timestamp,
}

impl Stamp {
    /// `worker_id`, now.
    pub fn now(worker_id: &str) -> Stamp {
        Stamp {
            worker_id: worker_id.to_string(),
            at: Timestamp::now(),
        }
    }
}

/// What a session event row says, beyond its session, kind and time.
#[derive(Debug, Clone, PartialEq)]
pub struct EventDetail {
    pub outcome: EventOutcome,
    pub turn: Option<u64>,
    pub stop_reason: Option<String>,
    pub duration_ms: Option<u64>,
    pub prompt: Option<Recorded>,
    pub output: Option<Recorded>,
    pub error: Option<String>,
    /// What a turn's agent reported its session had cost by the turn's end (its last `usage`
    /// event's `cost_usd`, which ACP makes the session's, cumulative).
    pub reported_cost_usd: Option<f64>,
}

impl EventDetail {
    /// An event that ended with `outcome`, and says nothing more.
    pub fn of(outcome: EventOutcome) -> EventDetail {
        EventDetail {
            outcome,
            turn: None,
            stop_reason: None,
            duration_ms: None,
            prompt: None,
            output: None,
            error: None,
            reported_cost_usd: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    Create,
    Turn,
    Close,
    SweepClose,
    HardDelete,
}

impl SessionEvent {
    pub const ALL: [SessionEvent; 5] = [
        SessionEvent::Create,
        SessionEvent::Turn,
        SessionEvent::Close,
        SessionEvent::SweepClose,
        SessionEvent::HardDelete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionEvent::Create => "create",
            SessionEvent::Turn => "turn",
            SessionEvent::Close => "close",
            SessionEvent::SweepClose => "sweep_close",
            SessionEvent::HardDelete => "hard_delete",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    Created,
    /// The live-session cap is reached; nothing was written.
    AtCapacity {
        open: u64,
    },
    /// A limit of its app refused it; nothing was written but the refusal.
    Refused(crate::quota::Refusal),
    /// An open session of the same app and agent has its name; nothing was written.
    NameTaken,
}

/// A turn to begin: whose, by which worker and when, its prompt; workers alive since
/// `alive_since` hold the session while they run a turn of it; `wait_id` is the turn's
/// reservation (see `reserve_turn`), without which it takes the session's next number.
#[derive(Debug, Clone)]
pub struct TurnStart {
    pub session_id: SessionId,
    pub app: String,
    pub by: Stamp,
    pub prompt: Recorded,
    pub alive_since: Timestamp,
    pub wait_id: Option<WaitId>,
}

/// When a session is idle: no turn since before `before` (nor a create), and none running or
/// waiting to begin on a worker alive since `alive_since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idle {
    pub before: Timestamp,
    pub alive_since: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeginTurn {
    Started {
        turn: u64,
        event_id: i64,
        /// Files attached at create, to list ahead of this (the first) turn.
        pending_files: Vec<String>,
    },
    NotFound,
    Closed,
    /// A turn of the session is running on another live worker.
    Busy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseOutcome {
    Closed,
    AlreadyClosed,
    NotFound,
}

/// A row of `session_events`, as the audit trail shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub id: i64,
    pub session_id: SessionId,
    pub app: String,
    pub event: SessionEvent,
    pub at: Timestamp,
    pub worker_id: String,
    pub turn: Option<u64>,
    pub outcome: EventOutcome,
    pub stop_reason: Option<String>,
    pub duration_ms: Option<u64>,
    pub prompt: Option<String>,
    pub prompt_bytes: Option<i64>,
    pub prompt_sha256: Option<String>,
    pub output: Option<String>,
    pub output_bytes: Option<i64>,
    pub output_sha256: Option<String>,
    pub error: Option<String>,
}

/// How a turn stands in the ledger, for a replay's final message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnRow {
    pub outcome: EventOutcome,
    pub stop_reason: Option<String>,
    pub duration_ms: Option<u64>,
    /// The output, when the ledger keeps text.
    pub output: Option<String>,
    pub error: Option<String>,
}

impl TurnRow {
    pub fn running(&self) -> bool {
        self.outcome == EventOutcome::Running
    }
}

/// A row of `runs`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub run_id: RunId,
    pub app: String,
    pub model: String,
    pub outcome: RunOutcome,
    pub worker_id: String,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub prompt: Recorded,
    pub result: Option<Recorded>,
    pub error: Option<String>,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<u64>,
    pub cost_usd: Option<f64>,
    pub stderr_tail: Option<String>,
}

/// A run to record as begun.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRun {
    pub run_id: RunId,
    pub app: String,
    pub model: String,
    pub prompt: Recorded,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEnd {
    pub outcome: RunOutcome,
    pub result: Option<Recorded>,
    pub error: Option<String>,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<u64>,
    pub cost_usd: Option<f64>,
    pub stderr_tail: Option<String>,
}

impl RunEnd {
    /// A run that ended with `outcome`, and says nothing more.
    pub fn of(outcome: RunOutcome) -> RunEnd {
        RunEnd {
            outcome,
            result: None,
            error: None,
            exit_code: None,
            duration_ms: None,
            cost_usd: None,
            stderr_tail: None,
        }
    }
}

/// The work a recovery found left running, and recorded as interrupted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interrupted {
    pub turns: u64,
    pub runs: u64,
}

/// A lease to take or renew: `name`, for `holder`, until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    pub expires_at: Timestamp,
}

/// The limits work of an app is admitted under (counted in the transaction that admits it),
/// and since when a worker must have been heard from for the turns it holds to count.
#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    pub limits: crate::quota::Limits,
    pub alive_since: Timestamp,
}

impl Admission {
    /// No limit.
    pub fn unlimited() -> Admission {
        Admission {
            limits: Default::default(),
            alive_since: Timestamp::now(),
        }
    }
}

/// How recording a run as begun went.
#[derive(Debug, Clone, PartialEq)]
pub enum RunBegun {
    Begun,
    /// A limit of its app refused it; nothing was written but the refusal.
    Refused(crate::quota::Refusal),
}

/// An app's own policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRow {
    pub app: String,
    pub fields: crate::wire::PolicyFields,
    pub updated_at: Timestamp,
}

/// What an app has used of each counted limit at one time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Used {
    pub open_sessions: u64,
    pub turns_in_flight: u64,
    pub runs_in_flight: u64,
    pub requests_this_minute: u64,
    pub turns_today: u64,
    pub runs_usd_today: f64,
    pub runs_usd_this_month: f64,
    pub agent_usd_this_month: f64,
}

impl Used {
    /// What `limit` counts.
    pub fn of(&self, limit: crate::quota::Limit) -> crate::quota::Amount {
        use crate::quota::{Amount, Limit};
        match limit {
            Limit::MaxOpenSessions => Amount::Count(self.open_sessions),
            Limit::MaxConcurrentTurns => Amount::Count(self.turns_in_flight),
            Limit::MaxConcurrentRuns => Amount::Count(self.runs_in_flight),
            Limit::RequestsPerMinute => Amount::Count(self.requests_this_minute),
            Limit::TurnsPerDay => Amount::Count(self.turns_today),
            Limit::RunsUsdPerDay => Amount::Usd(self.runs_usd_today),
            Limit::RunsUsdPerMonth => Amount::Usd(self.runs_usd_this_month),
            Limit::AgentUsdPerMonth => Amount::Usd(self.agent_usd_this_month),
            _ => Amount::Count(0),
        }
    }
}

/// What one app did on one UTC day.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DayRow {
    pub date: crate::quota::Day,
    pub app: String,
    pub sessions_created: u64,
    pub turns: u64,
    pub runs: u64,
    pub runs_usd: f64,
    pub agent_usd: f64,
    pub refused: std::collections::BTreeMap<crate::quota::Limit, u64>,
}
