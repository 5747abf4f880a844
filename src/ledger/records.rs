//! The records: tokens, sessions with their events, turns with their events, runs. One trait
//! per concern; an engine implements each.

use std::collections::HashMap;
use std::future::Future;

use super::rows::{
    BeginTurn, CloseOutcome, CreateOutcome, EventDetail, EventRow, Interrupted, Recorded, RunEnd,
    RunRow, SessionEvent, SessionRow, TokenRow, TurnRow, TurnStart,
};
use super::LedgerResult;
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
        token_id: String,
        at: String,
    ) -> impl Future<Output = LedgerResult<Option<()>>> + Send;

    fn active_token_count(&self) -> impl Future<Output = LedgerResult<u64>> + Send;
}

/// Sessions and their audit trail: created, closed, swept, deleted.
pub trait Sessions {
    /// Inserts an open session and its `create` event (`running` until
    /// [`Sessions::finish_create`]), unless `cap` sessions are already open.
    fn create_session(
        &self,
        row: SessionRow,
        worker_id: String,
        cap: u64,
    ) -> impl Future<Output = LedgerResult<CreateOutcome>> + Send;

    fn session(
        &self,
        session_id: String,
    ) -> impl Future<Output = LedgerResult<Option<SessionRow>>> + Send;

    /// The sessions of one app, newest first.
    fn sessions_of(
        &self,
        app: String,
    ) -> impl Future<Output = LedgerResult<Vec<SessionRow>>> + Send;

    /// Records how a create ended (its event was written as `running`).
    fn finish_create(
        &self,
        session_id: String,
        outcome: String,
        error: Option<String>,
    ) -> impl Future<Output = LedgerResult<()>> + Send;

    /// Keeps what the agent backend needs to reach the session again, and the worker whose
    /// agent process now holds it, if one does (`owner`: the first generation).
    fn set_agent_state(
        &self,
        session_id: String,
        state: String,
        owner: Option<String>,
    ) -> impl Future<Output = LedgerResult<()>> + Send;

    fn open_session_count(&self) -> impl Future<Output = LedgerResult<u64>> + Send;

    /// Closes an open session of `app` and records `event` (close or sweep_close).
    fn close_session(
        &self,
        session_id: String,
        app: String,
        event: SessionEvent,
        at: String,
        worker_id: String,
        detail: EventDetail,
    ) -> impl Future<Output = LedgerResult<CloseOutcome>> + Send;

    /// The audit trail of one session, oldest first.
    fn events_of(
        &self,
        session_id: String,
    ) -> impl Future<Output = LedgerResult<Vec<EventRow>>> + Send;

    /// Open sessions idle since before `idle_before` (last turn, or creation) with no turn
    /// running or waiting to begin on a worker alive since `alive_since`.
    fn idle_sessions(
        &self,
        idle_before: String,
        alive_since: String,
    ) -> impl Future<Output = LedgerResult<Vec<SessionRow>>> + Send;

    /// Closes a session as swept if it is still open, idle since before `idle_before`, and has
    /// no turn running — checked and written at once, so a turn that starts meanwhile wins.
    fn sweep_close(
        &self,
        session_id: String,
        idle_before: String,
        at: String,
        worker_id: String,
        alive_since: String,
    ) -> impl Future<Output = LedgerResult<bool>> + Send;

    /// Sessions closed before `closed_before`.
    fn expired_sessions(
        &self,
        closed_before: String,
    ) -> impl Future<Output = LedgerResult<Vec<SessionRow>>> + Send;

    /// Deletes a closed session's row; its events stay, with a `hard_delete` event last.
    fn hard_delete(
        &self,
        session_id: String,
        at: String,
        worker_id: String,
    ) -> impl Future<Output = LedgerResult<bool>> + Send;
}

/// The turns of sessions and the events they emitted.
pub trait Turns {
    /// Numbers a new turn and records it as running, if the session is open and `app`'s.
    fn begin_turn(&self, start: TurnStart) -> impl Future<Output = LedgerResult<BeginTurn>> + Send;

    /// Records how a turn ended, and moves the session's `last_turn_at` to its end.
    fn finish_turn(
        &self,
        session_id: String,
        event_id: i64,
        at: String,
        detail: EventDetail,
    ) -> impl Future<Output = LedgerResult<()>> + Send;

    /// Records a batch of a turn's events at once.
    fn record_events(
        &self,
        events: Vec<wire::Event>,
    ) -> impl Future<Output = LedgerResult<()>> + Send;

    /// The recorded events of turn `turn` of `session_id` after `after`, in order (a bounded
    /// number of them: read again after the last one for more).
    fn events_after(
        &self,
        session_id: String,
        turn: u64,
        after: u64,
    ) -> impl Future<Output = LedgerResult<Vec<wire::Event>>> + Send;

    /// Turn `turn` of `session_id` as the ledger has it; `None` when there is no such turn.
    fn turn_row(
        &self,
        session_id: String,
        turn: u64,
    ) -> impl Future<Output = LedgerResult<Option<TurnRow>>> + Send;

    /// The number of the session's latest turn, if it has one.
    fn latest_turn(
        &self,
        session_id: String,
    ) -> impl Future<Output = LedgerResult<Option<u64>>> + Send;
}

/// One-shot runs.
pub trait Runs {
    /// Records a run as `running`, before its process starts: a crash leaves the row behind.
    fn begin_run(
        &self,
        run_id: String,
        app: String,
        model: String,
        worker_id: String,
        created_at: String,
        prompt: Recorded,
    ) -> impl Future<Output = LedgerResult<()>> + Send;

    /// Records how a run ended.
    fn finish_run(
        &self,
        run_id: String,
        finished_at: String,
        end: RunEnd,
    ) -> impl Future<Output = LedgerResult<()>> + Send;

    fn run(&self, run_id: String) -> impl Future<Output = LedgerResult<Option<RunRow>>> + Send;

    /// The end time of each of `run_ids` the ledger knows: `None` for a run with none (still
    /// running, or cut short). Runs the ledger does not know are left out.
    fn runs_finished_at(
        &self,
        run_ids: Vec<String>,
    ) -> impl Future<Output = LedgerResult<HashMap<String, Option<String>>>> + Send;
}

/// The records of work its worker left running: turns and runs recorded as interrupted, and
/// turns taken that will not begin recorded with why.
pub trait Recovery {
    /// Marks as `interrupted` the turns and runs still `running` under a worker that stopped,
    /// or whose heartbeat is older than `stale_before`, or that never wrote one.
    fn recover_interrupted(
        &self,
        stale_before: String,
        at: String,
    ) -> impl Future<Output = LedgerResult<Interrupted>> + Send;

    /// Marks this worker's own running turns and runs as interrupted (at shutdown, after the
    /// grace).
    fn interrupt_own(
        &self,
        worker_id: String,
        at: String,
        why: String,
    ) -> impl Future<Output = LedgerResult<Interrupted>> + Send;
}
