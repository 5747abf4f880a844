//! What the workers sharing a ledger agree through it: which are alive, who holds a lease, which
//! worker owns a session (by compare-and-set on a generation), and the turns taken and not yet
//! begun. One trait per concern; an engine implements each.

use std::future::Future;

use super::rows::Admission;
use super::rows::{Lease, Stamp};
use super::{EventOutcome, LedgerResult};
use crate::values::{SessionId, Timestamp, WaitId};

/// The workers: alive (heartbeats), draining, stopped; and leases among them.
pub trait Workers {
    /// Records that `worker_id` is alive now.
    fn heartbeat(
        &self,
        worker_id: String,
        at: Timestamp,
    ) -> impl Future<Output = LedgerResult<()>> + Send;

    /// Records that `worker_id` is draining: the sessions it owns go to whichever worker gets
    /// their next request.
    fn worker_draining(
        &self,
        worker_id: String,
        at: Timestamp,
    ) -> impl Future<Output = LedgerResult<()>> + Send;

    /// Records that `worker_id` stopped on purpose: the sessions it owned are nobody's.
    fn worker_stopped(
        &self,
        worker_id: String,
        at: Timestamp,
    ) -> impl Future<Output = LedgerResult<()>> + Send;

    /// Takes or renews `lease`, unless another holder has it and it has not expired by `now`.
    fn try_lease(
        &self,
        lease: Lease,
        now: Timestamp,
    ) -> impl Future<Output = LedgerResult<bool>> + Send;
}

/// A session's owner as the ledger has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// The asking worker owns it (now, or from before), at this generation.
    Mine { generation: u64 },
    /// Another live worker that is not draining owns it.
    Held { worker_id: String, generation: u64 },
}

/// Which worker owns a session of the native backend (its agent process holds the session),
/// with a generation number that every change of owner raises.
pub trait Ownership {
    /// The owner of `session_id` for `worker_id`: the session becomes the asker's when nobody
    /// owns it or its owner is dead (no heartbeat since `alive_since`), stopped or draining.
    /// `None` when there is no such session.
    fn claim_session(
        &self,
        session_id: SessionId,
        worker_id: String,
        alive_since: Timestamp,
    ) -> impl Future<Output = LedgerResult<Option<Owner>>> + Send;

    /// Takes `session_id` for `worker_id` if its owner is still at `generation` (its owner was
    /// found unreachable): the new generation, or `None` when it changed meanwhile.
    fn take_session(
        &self,
        session_id: SessionId,
        worker_id: String,
        generation: u64,
    ) -> impl Future<Output = LedgerResult<Option<u64>>> + Send;
}

/// What taking a turn gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Reserved {
    Turn(u64),
    NotFound,
    Closed,
    /// A limit of its app refused it; nothing was written but the refusal.
    Refused(crate::quota::Refusal),
}

/// Turns taken by a worker and numbered, not yet begun; and which worker holds a session's
/// current turn.
pub trait TurnWaits {
    /// Records that `by`'s worker has taken a turn of `session_id` (the caller's, `app`)
    /// that has not begun yet, and gives it the session's next number; unless the app's
    /// turns in flight, turns today or agents' cost this month are at their limits.
    fn reserve_turn(
        &self,
        wait_id: WaitId,
        session_id: SessionId,
        app: String,
        by: Stamp,
        admission: Admission,
    ) -> impl Future<Output = LedgerResult<Reserved>> + Send;

    /// A turn taken and numbered that will not begin: its number is recorded with why.
    fn abandon_turn(
        &self,
        wait_id: WaitId,
        at: Timestamp,
        outcome: EventOutcome,
        error: String,
    ) -> impl Future<Output = LedgerResult<()>> + Send;

    /// The live worker (heartbeat no older than `alive_since`) that holds the current turn of
    /// `session_id`: the one running a turn of it, or else the one that took the oldest turn
    /// still waiting to begin.
    fn turn_holder(
        &self,
        session_id: SessionId,
        alive_since: Timestamp,
    ) -> impl Future<Output = LedgerResult<Option<String>>> + Send;
}
