//! The records: tokens, sessions with their events, turns with their events, runs. One trait
//! per concern; an engine implements each.

use std::collections::HashMap;
use std::future::Future;

use super::rows::{
    BeginTurn, CloseOutcome, CreateOutcome, EventDetail, EventRow, Idle, Interrupted, NewRun,
    RunBegun, RunEnd, RunRow, SessionEvent, SessionFilter, SessionRow, Stamp, TokenRow, TurnRow,
    TurnStart,
};
use super::{EventOutcome, LedgerResult};
use crate::quota::Limits;
use crate::values::{RunId, SessionId, Timestamp, TokenId};
use crate::wire;

/// The apps' tokens, kept by their hashes.
pub trait Tokens {
    fn insert_token(&self, row: TokenRow) -> impl Future<Output = LedgerResult<()>> + Send;

    fn token_by_hash(
        &self,
        hash: String,
    ) -> impl Future<Output = LedgerResult<Option<TokenRow>>> + Send;

    /// Every token, oldest first.
    fn list_tokens(&self) -> impl Future<Output = LedgerResult<Vec<TokenRow>>> + Send;

    /// Revokes a token. `None` when there is no such token; the first revocation time is kept.
    fn revoke_token(
        &self,
        token_id: TokenId,
        at: Timestamp,
    ) -> impl Future<Output = LedgerResult<Option<()>>> + Send;

    fn active_token_count(&self) -> impl Future<Output = LedgerResult<u64>> + Send;
}

/// Sessions and their audit trail: created, closed, swept, deleted.
pub trait Sessions {
    /// Inserts an open session and its `create` event (`running` until
    /// [`Sessions::finish_create`]), unless `cap` sessions are already open or its app's are
    /// at `limits`.
    fn create_session(
        &self,
        row: SessionRow,
        worker_id: String,
        cap: u64,
        limits: Limits,
    ) -> impl Future<Output = LedgerResult<CreateOutcome>> + Send;

    fn session(
        &self,
        session_id: SessionId,
    ) -> impl Future<Output = LedgerResult<Option<SessionRow>>> + Send;

    /// The sessions of one app, newest first.
    fn sessions_of(
        &self,
        app: String,
    ) -> impl Future<Output = LedgerResult<Vec<SessionRow>>> + Send;

    /// Every app's sessions that match `filter`, newest first, its page of them, and how many
    /// match in all.
    fn sessions_matching(
        &self,
        filter: SessionFilter,
    ) -> impl Future<Output = LedgerResult<(Vec<SessionRow>, u64)>> + Send;

    /// Records how a create ended (its event was written as `running`).
    fn finish_create(
        &self,
        session_id: SessionId,
        outcome: EventOutcome,
        error: Option<String>,
    ) -> impl Future<Output = LedgerResult<()>> + Send;

    /// Keeps what the agent backend needs to reach the session again, and the worker whose
    /// agent process now holds it, if one does (`owner`: the first generation).
    fn set_agent_state(
        &self,
        session_id: SessionId,
        state: String,
        owner: Option<String>,
    ) -> impl Future<Output = LedgerResult<()>> + Send;

    fn open_session_count(&self) -> impl Future<Output = LedgerResult<u64>> + Send;

    /// Closes an open session of `app` and records `event` (close or sweep_close).
    fn close_session(
        &self,
        session_id: SessionId,
        app: String,
        event: SessionEvent,
        by: Stamp,
        detail: EventDetail,
    ) -> impl Future<Output = LedgerResult<CloseOutcome>> + Send;

    /// The audit trail of one session, oldest first.
    fn events_of(
        &self,
        session_id: SessionId,
    ) -> impl Future<Output = LedgerResult<Vec<EventRow>>> + Send;

    /// The open sessions that are `idle`.
    fn idle_sessions(
        &self,
        idle: Idle,
    ) -> impl Future<Output = LedgerResult<Vec<SessionRow>>> + Send;

    /// Closes a session as swept if it is still open and `idle` — checked and written at
    /// once, so a turn that starts meanwhile wins.
    fn sweep_close(
        &self,
        session_id: SessionId,
        idle: Idle,
        by: Stamp,
    ) -> impl Future<Output = LedgerResult<bool>> + Send;

    /// Sessions closed before `closed_before`.
    fn expired_sessions(
        &self,
        closed_before: Timestamp,
    ) -> impl Future<Output = LedgerResult<Vec<SessionRow>>> + Send;

    /// Deletes a closed session's row; its events stay, with a `hard_delete` event last.
    fn hard_delete(
        &self,
        session_id: SessionId,
        by: Stamp,
    ) -> impl Future<Output = LedgerResult<bool>> + Send;
}

/// The turns of sessions and the events they emitted.
pub trait Turns {
    /// Numbers a new turn and records it as running, if the session is open and `app`'s.
    fn begin_turn(&self, start: TurnStart) -> impl Future<Output = LedgerResult<BeginTurn>> + Send;

    /// Records how a turn ended, and moves the session's `last_turn_at` to its end. Returns
    /// the turn's own cost, when its agent reported the session's.
    fn finish_turn(
        &self,
        session_id: SessionId,
        event_id: i64,
        at: Timestamp,
        detail: EventDetail,
    ) -> impl Future<Output = LedgerResult<Option<f64>>> + Send;

    /// Records a batch of a turn's events at once.
    fn record_events(
        &self,
        events: Vec<wire::Event>,
    ) -> impl Future<Output = LedgerResult<()>> + Send;

    /// The recorded events of turn `turn` of `session_id` after `after`, in order (a bounded
    /// number of them: read again after the last one for more).
    fn events_after(
        &self,
        session_id: SessionId,
        turn: u64,
        after: u64,
    ) -> impl Future<Output = LedgerResult<Vec<wire::Event>>> + Send;

    /// Turn `turn` of `session_id` as the ledger has it; `None` when there is no such turn.
    fn turn_row(
        &self,
        session_id: SessionId,
        turn: u64,
    ) -> impl Future<Output = LedgerResult<Option<TurnRow>>> + Send;

    /// The number of the session's latest turn, if it has one.
    fn latest_turn(
        &self,
        session_id: SessionId,
    ) -> impl Future<Output = LedgerResult<Option<u64>>> + Send;
}

/// One-shot runs.
pub trait Runs {
    /// Records a run as `running`, before its process starts (a crash leaves the row behind);
    /// unless its app's runs in flight or runs' cost are at `limits`.
    fn begin_run(
        &self,
        run: NewRun,
        by: Stamp,
        limits: Limits,
    ) -> impl Future<Output = LedgerResult<RunBegun>> + Send;

    /// Records how a run ended.
    fn finish_run(
        &self,
        run_id: RunId,
        finished_at: Timestamp,
        end: RunEnd,
    ) -> impl Future<Output = LedgerResult<()>> + Send;

    fn run(&self, run_id: RunId) -> impl Future<Output = LedgerResult<Option<RunRow>>> + Send;

    /// The end time of each of `run_ids` the ledger knows: `None` for a run with none (still
    /// running, or cut short). Runs the ledger does not know are left out.
    fn runs_finished_at(
        &self,
        run_ids: Vec<RunId>,
    ) -> impl Future<Output = LedgerResult<HashMap<RunId, Option<Timestamp>>>> + Send;
}

/// The records of work its worker left running: turns and runs recorded as interrupted, and
/// turns taken that will not begin recorded with why.
pub trait Recovery {
    /// Marks as `interrupted` the turns and runs still `running` under a worker that stopped,
    /// or whose heartbeat is older than `stale_before`, or that never wrote one.
    fn recover_interrupted(
        &self,
        stale_before: Timestamp,
        at: Timestamp,
    ) -> impl Future<Output = LedgerResult<Interrupted>> + Send;

    /// Marks the running turns and runs of `by`'s worker as interrupted at its time (at
    /// shutdown, after the grace).
    fn interrupt_own(
        &self,
        by: Stamp,
        why: String,
    ) -> impl Future<Output = LedgerResult<Interrupted>> + Send;
}
