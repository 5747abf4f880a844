//! Where a request about a session is served. A session of the native backend lives in the
//! agent process of the worker that owns it: its turns and its close go there. A cancel or a permission
//! answer goes to the worker holding the session's current turn. The transport passes a
//! request served elsewhere on to that worker.

use super::types::SessionId;
use super::Forge;
use crate::config::BackendKind;
use crate::ledger::{Owner, Ownership, Sessions, TurnWaits, Workers};
use crate::values::Timestamp;

/// What a request about a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Turn,
    /// A close: the owner's agent process lets the session go.
    Close,
    Cancel,
    Permission,
}

/// Where a request is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Here; also whenever the request is refused (its error comes from serving it).
    Here,
    /// On this worker. `generation` is the ownership the route rests on (a turn's); if the
    /// worker cannot be reached, [`Forge::take_over`] takes the session from that generation.
    On {
        worker_id: String,
        generation: Option<u64>,
    },
}

impl Forge {
    /// Where `step` of `session_id` is served, known before the caller is (the worker that
    /// serves the request authenticates it, once). A turn of a native session nobody live owns
    /// makes this worker its owner: ownership is where a session's agent runs, never what it
    /// may do, and the next request would take it the same way.
    pub async fn route(&self, step: Step, id: SessionId) -> Route {
        let Ok(Some(row)) = self.ledger.session(id).await else {
            return Route::Here;
        };
        let alive_since = Timestamp::seconds_from_now(-self.dead_after_secs());
        let me = &self.settings.worker_id;
        let native = self.agent_session(&row).backend == BackendKind::Acp;
        let found = match step {
            Step::Turn | Step::Close if !native || !row.open => return Route::Here,
            Step::Turn | Step::Close => self
                .ledger
                .claim_session(row.session_id, me.clone(), alive_since)
                .await
                .map(|owner| match owner {
                    Some(Owner::Held {
                        worker_id,
                        generation,
                    }) => Some((worker_id, Some(generation))),
                    _ => None,
                }),
            Step::Cancel | Step::Permission => self
                .ledger
                .turn_holder(row.session_id, alive_since)
                .await
                .map(|holder| holder.map(|w| (w, None))),
        };
        match found {
            Ok(Some((worker_id, generation))) if worker_id != *me => Route::On {
                worker_id,
                generation,
            },
            Ok(_) => Route::Here,
            Err(e) => {
                tracing::error!(error = %e, "ledger: finding where a request is served");
                Route::Here
            }
        }
    }

    /// The owner at `generation` could not be reached: this worker takes the session over,
    /// unless it changed hands meanwhile (`false`: route again). The agent process here loads
    /// it at its next turn.
    pub async fn take_over(&self, id: SessionId, from: &str, generation: u64) -> bool {
        let me = self.settings.worker_id.clone();
        let taken = self.ledger.take_session(id, me, generation).await;
        match taken {
            Ok(Some(generation)) => {
                tracing::info!(session = %id, from, generation, "session taken over");
                true
            }
            Ok(None) => {
                tracing::debug!(session = %id, "the session changed hands");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "ledger: taking a session over");
                true
            }
        }
    }

    /// The worker starts draining: the sessions it owns go to whichever worker gets their next
    /// request, which waits only for a turn still running here.
    pub async fn drain(&self) {
        let me = self.settings.worker_id.clone();
        if let Err(e) = self.ledger.worker_draining(me, Timestamp::now()).await {
            tracing::error!(error = %e, "ledger: recording that the worker drains");
        }
    }
}
