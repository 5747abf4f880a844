//! Taking a turn: the first step after a turn's checks. The turn gets its place (its session's
//! lock if free, else a place in the queue, refused when the queue is full: then nothing is
//! written) and its number from the ledger, which records it as waiting to begin. A turn taken
//! and numbered that then does not begin is recorded with why, so no number goes missing.

use tokio::sync::OwnedMutexGuard;

use super::limits::{PendingLock, Waiting};
use super::Forge;
use crate::error::{Error, ErrorKind, Result};
use crate::ledger::{Admission, EventOutcome, Ledger, Reserved, SessionRow, Stamp, TurnWaits};
use crate::quota::Limits;
use crate::values::{Timestamp, WaitId};
use crate::wire::{TurnAccepted, TurnStatus};

/// A turn's hold on its session in this worker.
pub(super) enum SessionLock {
    Held(OwnedMutexGuard<()>),
    /// In the lock's queue already, behind the turns numbered before it.
    Queued(PendingLock),
}

/// A turn this worker took and numbered, until it begins.
pub(super) struct Taken<'a> {
    ledger: Ledger,
    /// The ledger's record of the wait; `None` once the turn began (or was recorded as not).
    wait_id: Option<WaitId>,
    pub(super) turn: u64,
    pub(super) status: TurnStatus,
    /// The session's lock: held, or waited for in the order the turns were numbered.
    pub(super) lock: Option<SessionLock>,
    /// A place in the queue, for a turn that has to wait for its session or for a slot.
    pub(super) place: Option<Waiting<'a>>,
}

impl Taken<'_> {
    pub(super) fn wait_id(&self) -> Option<WaitId> {
        self.wait_id
    }

    /// The turn began: the ledger took its wait in the same transaction.
    pub(super) fn began(&mut self) {
        self.wait_id = None;
    }

    /// The turn will not begin: its number is recorded with the error (it did not run).
    pub(super) async fn abandon(&mut self, err: &Error) {
        let Some(id) = self.wait_id.take() else {
            return;
        };
        let why = format!("{} (the turn did not run)", err.message);
        let recorded = self
            .ledger
            .abandon_turn(id, Timestamp::now(), EventOutcome::Failed(err.kind), why)
            .await;
        if let Err(e) = recorded {
            tracing::error!(error = %e, "could not record a turn that did not begin");
        }
    }

    pub(super) fn reply(&self, session_id: &str) -> TurnAccepted {
        TurnAccepted {
            session_id: session_id.to_string(),
            turn: self.turn,
            status: self.status,
        }
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        // Dropped on the way (the request went away): recorded all the same. (Outside a runtime
        // — the process ending — the worker's stop or the sweep records it as interrupted.)
        let runtime = tokio::runtime::Handle::try_current();
        if let (Some(id), Ok(runtime)) = (self.wait_id.take(), runtime) {
            let ledger = self.ledger.clone();
            runtime.spawn(async move {
                let why = "the request ended before the turn began (the turn did not run)";
                let internal = EventOutcome::Failed(ErrorKind::Internal);
                ledger
                    .abandon_turn(id, Timestamp::now(), internal, why.into())
                    .await
            });
        }
    }
}

impl Forge {
    /// Takes a turn of `row`'s session for its app. Turns of one session taken by this worker
    /// are numbered and queued for the session one at a time, so they run in the order of their
    /// numbers.
    pub(super) async fn take_turn(&self, row: &SessionRow, limits: &Limits) -> Result<Taken<'_>> {
        let _numbering = self.numbering.lock(&row.session_id.to_string()).await;
        let mut queued = self.session_locks.queue_for(&row.session_id.to_string());
        let lock = match futures::poll!(queued.as_mut()) {
            std::task::Poll::Ready(held) => SessionLock::Held(held),
            std::task::Poll::Pending => SessionLock::Queued(queued),
        };
        let at_once = matches!(lock, SessionLock::Held(_)) && self.turns.has_free_slot();
        let place = if at_once {
            None
        } else {
            Some(self.turns.queue_place()?)
        };
        let wait_id = WaitId::new();
        let reserved = self
            .ledger
            .reserve_turn(
                wait_id,
                row.session_id,
                row.app.clone(),
                Stamp::now(&self.settings.worker_id),
                Admission {
                    limits: limits.clone(),
                    alive_since: Timestamp::seconds_from_now(-self.dead_after_secs()),
                },
            )
            .await?;
        let turn = match reserved {
            Reserved::Turn(n) => n,
            Reserved::Refused(refused) => return Err(super::apps::refusal(&row.app, &refused)),
            Reserved::NotFound => return Err(Error::not_found("no such session")),
            Reserved::Closed => return Err(Error::conflict("the session is closed")),
        };
        Ok(Taken {
            ledger: self.ledger.clone(),
            wait_id: Some(wait_id),
            turn,
            status: if at_once {
                TurnStatus::Running
            } else {
                TurnStatus::Queued
            },
            lock: Some(lock),
            place,
        })
    }
}
