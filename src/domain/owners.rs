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

    /// Waits, until `deadline` at most, while another worker runs a turn of an acpx session
    /// whose agent may be one of this worker's processes (see [`Hosted`]); returns how many
    /// such turns it waited for.
    pub async fn wait_for_hosted_turns(&self, deadline: tokio::time::Instant) -> usize {
        let mut waited = 0;
        loop {
            let busy = self.hosted_turns_elsewhere().await;
            if busy == 0 || tokio::time::Instant::now() >= deadline {
                return waited;
            }
            if busy > waited {
                tracing::info!(
                    turns = busy,
                    "waiting for other workers' turns on sessions whose agent this worker started"
                );
                waited = busy;
            }
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + HOSTED_POLL)).await;
        }
    }

    /// How many of the hosted sessions have a turn held by another live worker.
    async fn hosted_turns_elsewhere(&self) -> usize {
        let alive_since = Timestamp::seconds_from_now(-self.dead_after_secs());
        let me = &self.settings.worker_id;
        let mut busy = 0;
        for id in self.hosted.sessions() {
            match self.ledger.turn_holder(id, alive_since).await {
                Ok(Some(worker)) if worker != *me => busy += 1,
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "ledger: finding a session's turn"),
            }
        }
        busy
    }
}

/// How often a stopping worker looks again at the turns it waits for.
const HOSTED_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// The acpx sessions this worker ran a turn of. acpx keeps a session's agent in a queue owner
/// that the first `acpx prompt` starts and leaves behind, and every worker reaches it (through
/// the apps' homes and /tmp). It lives on when the worker that started it stops, on a host; in
/// a container it is one of the worker's container's processes, and the container's runtime
/// ends it when the worker exits (as systemd does with a unit's processes): a turn another
/// worker runs on it then fails ("Queue owner disconnected"). So a stopping worker waits for
/// such turns, within its grace period ([`Forge::wait_for_hosted_turns`]).
#[derive(Default)]
pub struct Hosted(std::sync::Mutex<std::collections::HashSet<SessionId>>);

impl Hosted {
    pub fn insert(&self, id: SessionId) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
    }

    fn sessions(&self) -> Vec<SessionId> {
        let set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        set.iter().copied().collect()
    }
}
