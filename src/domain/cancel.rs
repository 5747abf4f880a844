//! Cancelling a session's current turn, wherever it runs: the registry of the turns this worker
//! holds, and the way to the worker that holds a turn elsewhere.

use std::collections::HashMap;

use tokio_util::sync::CancellationToken;

use super::types::SessionId;
use super::{Caller, Forge};
use crate::error::Result;
use crate::wire;

/// The turns this worker holds (each session's current one: running, or admitted and about to
/// start): session id → the cancellation of that turn.
#[derive(Default)]
pub(super) struct RunningTurns(std::sync::Mutex<HashMap<String, CancellationToken>>);

impl RunningTurns {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the turn of `session_id`, if this worker holds one, to stop; `true` if it did.
    pub(super) fn cancel(&self, session_id: &str) -> bool {
        self.map().get(session_id).map(|t| t.cancel()).is_some()
    }

    /// Tells every turn to stop; how many there were.
    pub(super) fn cancel_all(&self) -> usize {
        let map = self.map();
        map.values().for_each(CancellationToken::cancel);
        map.len()
    }
}

/// A turn in the registry, for as long as it lives.
pub(super) struct Registered<'a> {
    running: &'a RunningTurns,
    session_id: String,
    pub(super) cancel: CancellationToken,
}

impl<'a> Registered<'a> {
    pub(super) fn new(running: &'a RunningTurns, session_id: &str) -> Self {
        let cancel = CancellationToken::new();
        running.map().insert(session_id.to_string(), cancel.clone());
        Registered {
            running,
            session_id: session_id.to_string(),
            cancel,
        }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.running.map().remove(&self.session_id);
    }
}

impl Forge {
    /// `forge.session.cancel`, decided by this worker's registry: the request reaches the
    /// worker holding the turn (see [`Forge::route`]).
    pub async fn cancel_turn(&self, caller: &Caller, id: SessionId) -> Result<wire::Cancelled> {
        let row = self.watched_session(caller, &id).await?;
        let cancelled = self.cancel_running_turn(&row.session_id.to_string(), "cancel");
        Ok(wire::Cancelled {
            session_id: row.session_id.to_string(),
            cancelled,
        })
    }

    /// Cancels the turn of `session_id` this worker holds, if it holds one: it answers
    /// `cancelled`. `why` says what asked for it, in the log.
    pub(super) fn cancel_running_turn(&self, session_id: &str, why: &str) -> bool {
        let cancelled = self.running_turns.cancel(session_id);
        if cancelled {
            tracing::info!(session = %session_id, why, "turn cancelled");
        }
        cancelled
    }

    /// Tells every turn this worker holds to stop (at shutdown, once the grace period is over);
    /// they answer `cancelled`. Returns how many there were.
    pub(super) fn cancel_running_turns(&self) -> usize {
        self.running_turns.cancel_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_cancels_only_what_it_holds() {
        let running = RunningTurns::default();
        let r = Registered::new(&running, "a");
        assert!(!running.cancel("b"));
        assert!(running.cancel("a"));
        assert!(r.cancel.is_cancelled());
        assert_eq!(running.cancel_all(), 1);
        drop(r);
        assert_eq!(running.cancel_all(), 0);
    }
}
