//! One turn of a session, in four steps: admit (checks, the session's earlier turns, a slot),
//! begin (the files, the ledger's `running` row), drive (the agent backend, its events, the
//! cancellation), finish (the ledger's outcome, the reply).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, OwnedMutexGuard, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::files::{self, Attachment};
use super::types::{Prompt, SessionId};
use super::{now, seconds_from_now, Caller, Forge};
use crate::agent::{self, AgentError, EventSink, StopReason, TurnEnd};
use crate::error::{Error, ErrorKind, Result};
use crate::ledger::{BeginTurn, EventDetail, Recorded, SessionRow};
use crate::wire;

/// How often a turn waiting for another worker's turn of its session looks again.
const OTHER_WORKER_POLL: Duration = Duration::from_millis(100);

/// Why a turn cancelled at shutdown ended, in the ledger.
const SHUT_DOWN_RUNNING: &str = "the worker shut down during the turn; it was cancelled";

/// How many of a turn's events may wait for the domain to take them.
const EVENT_BUFFER: usize = 256;

/// How much of a turn's message text the domain keeps, for a turn that ends without the
/// backend's own output (a cancelled turn whose agent failed on the way out).
const MAX_SAID: usize = 768 * 1024;

impl From<AgentError> for Error {
    fn from(e: AgentError) -> Error {
        match e {
            AgentError::Timeout => Error::timeout("the agent did not finish within the timeout"),
            AgentError::Unavailable { .. } => {
                tracing::error!(error = %e, "the agent runner could not be started");
                Error::agent("the agent runner (acpx) is not available on this worker")
            }
            AgentError::Failed(message) => Error::agent(message),
        }
    }
}

/// The turns this worker is running: session id → the cancellation of its turn.
#[derive(Default)]
pub(super) struct RunningTurns(std::sync::Mutex<HashMap<String, CancellationToken>>);

impl RunningTurns {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the turn of `session_id`, if this worker runs one, to stop; `true` if it did.
    pub(super) fn cancel(&self, session_id: &str) -> bool {
        self.map().get(session_id).map(|t| t.cancel()).is_some()
    }

    /// Tells every running turn to stop; how many there were.
    pub(super) fn cancel_all(&self) -> usize {
        let map = self.map();
        map.values().for_each(CancellationToken::cancel);
        map.len()
    }
}

/// A turn in the registry of running turns, for as long as it lives.
struct Registered<'a> {
    running: &'a RunningTurns,
    session_id: String,
    cancel: CancellationToken,
}

impl<'a> Registered<'a> {
    fn new(running: &'a RunningTurns, session_id: &str) -> Self {
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

/// A turn this worker took: checked, its session open, its budget counting from `received`.
struct Accepted {
    row: SessionRow,
    prompt: Prompt,
    attachments: Vec<Attachment>,
    received: Instant,
    budget: Duration,
}

impl Accepted {
    fn deadline(&self) -> Instant {
        self.received + self.budget
    }
}

/// What lets an admitted turn run: its session's lock in this worker and a slot.
struct Admission {
    _session: OwnedMutexGuard<()>,
    _slot: OwnedSemaphorePermit,
}

/// A turn the ledger records as running.
struct Begun {
    turn: u64,
    event_id: i64,
    /// The prompt as the agent gets it, with the attached files listed ahead.
    text: String,
}

/// How the agent's part of a turn went.
struct Driven {
    result: std::result::Result<TurnEnd, AgentError>,
    duration_ms: u64,
    /// Ended by the worker's shutdown rather than by the agent or the caller.
    interrupted: bool,
}

/// Where a live turn's events go as they happen (the transport's stream), numbered and dated.
pub type EventStream = mpsc::Sender<wire::Event>;

impl Forge {
    pub async fn turn(&self, caller: &Caller, req: wire::TurnRequest) -> Result<wire::Turn> {
        self.live_turn(caller, req, None).await
    }

    /// A turn whose events also go to `events` as they happen, before its reply. A stream
    /// nobody reads any more does not stop the turn.
    pub async fn live_turn(
        &self,
        caller: &Caller,
        req: wire::TurnRequest,
        events: Option<EventStream>,
    ) -> Result<wire::Turn> {
        let mut accepted = self.accept(caller, req).await?;
        let attachments = std::mem::take(&mut accepted.attachments);
        let span =
            tracing::info_span!("turn", session = %accepted.row.session_id, app = %caller.app);
        async {
            let _admission = self.admit_turn(&accepted).await?;
            let begun = self.begin(caller, &accepted, attachments).await?;
            let driven = self.drive(&accepted, &begun, events).await;
            self.finish(&accepted, &begun, driven).await
        }
        .instrument(span)
        .await
    }

    /// The request's checks, and its session, open and the caller's.
    async fn accept(&self, caller: &Caller, req: wire::TurnRequest) -> Result<Accepted> {
        let id = SessionId::parse(&req.session_id)?;
        let prompt = Prompt::parse(req.prompt, self.settings.max_prompt_bytes)?;
        let timeout = self.timeout_secs(req.timeout_secs)?;
        let attachments = self.attachments(&req.files)?;
        let row = self.owned_session(caller, &id).await?;
        if !row.open {
            return Err(Error::conflict("the session is closed"));
        }
        Ok(Accepted {
            row,
            prompt,
            attachments,
            received: Instant::now(),
            budget: Duration::from_secs(timeout),
        })
    }

    /// Waits for the session's earlier turns in this worker and for a slot, within the turn's
    /// budget. Waiting for the session holds a place in the queue too.
    #[tracing::instrument(name = "admit", skip_all)]
    async fn admit_turn(&self, t: &Accepted) -> Result<Admission> {
        let session_id = &t.row.session_id;
        self.admit(t.budget, async {
            let session = match self.session_locks.try_lock(session_id) {
                Some(session) => session,
                None => {
                    let _place = self.turns.queue_place()?;
                    tracing::debug!("turn waiting for the session's earlier turn");
                    self.session_locks.lock(session_id).await
                }
            };
            Ok(Admission {
                _session: session,
                _slot: self.turns.acquire().await?,
            })
        })
        .await
    }

    /// Writes the attached files and has the ledger start the turn, unless another worker is
    /// running one of this session: then this one waits for it, within its budget. (A ledger
    /// call is never abandoned half-way: it could record a turn that nothing then runs.)
    #[tracing::instrument(name = "begin", skip_all)]
    async fn begin(
        &self,
        caller: &Caller,
        t: &Accepted,
        attachments: Vec<Attachment>,
    ) -> Result<Begun> {
        let cwd = std::path::Path::new(&t.row.cwd);
        let written = files::write(cwd, attachments)
            .await
            .map_err(Error::internal)?;
        let recorded = Recorded::of(t.prompt.as_str(), self.settings.ledger_keep_text);
        let mut logged = false;
        let (turn, event_id, mut listed) = loop {
            let begun = self
                .ledger
                .begin_turn(
                    t.row.session_id.clone(),
                    caller.app.clone(),
                    now(),
                    self.settings.worker_id.clone(),
                    recorded.clone(),
                    seconds_from_now(-self.dead_after_secs()),
                )
                .await
                .map_err(Error::internal)?;
            match begun {
                BeginTurn::Started {
                    turn,
                    event_id,
                    pending_files,
                } => break (turn, event_id, pending_files),
                BeginTurn::NotFound => return Err(Error::not_found("no such session")),
                BeginTurn::Closed => return Err(Error::conflict("the session is closed")),
                BeginTurn::Busy => {
                    if !std::mem::replace(&mut logged, true) {
                        tracing::debug!("turn waiting for another worker's turn of the session");
                    }
                    self.pause_before_retry(OTHER_WORKER_POLL, t.received, t.budget)
                        .await?;
                }
            }
        };
        for p in written {
            let p = p.to_string_lossy().into_owned();
            if !listed.contains(&p) {
                listed.push(p);
            }
        }
        let text = files::with_header(&listed, t.prompt.as_str());
        Ok(Begun {
            turn,
            event_id,
            text,
        })
    }

    /// Runs the turn on the agent backend, cancellable through the registry of running turns,
    /// and takes its events as they come.
    #[tracing::instrument(name = "drive", skip_all, fields(turn = b.turn))]
    async fn drive(&self, t: &Accepted, b: &Begun, out: Option<EventStream>) -> Driven {
        let session = self.agent_session(&t.row);
        let registered = Registered::new(&self.running_turns, &t.row.session_id);
        let (sink, mut events) = EventSink::channel(EVENT_BUFFER);
        let started = Instant::now();
        let prompt = agent::Prompt {
            text: &b.text,
            sink,
            cancel: &registered.cancel,
            deadline: t.deadline(),
        };
        let run = self.agent.prompt(&session, prompt);
        let take = async {
            let mut said = String::new();
            let mut seq = 0;
            while let Some(body) = events.recv().await {
                if let wire::EventBody::Message { text } = &body {
                    if said.len() + text.len() <= MAX_SAID {
                        said.push_str(text);
                    }
                }
                seq += 1;
                if let Some(out) = &out {
                    let event = wire::Event {
                        session_id: Some(t.row.session_id.clone()),
                        turn: Some(b.turn),
                        run_id: None,
                        seq,
                        at: now(),
                        body,
                    };
                    let _ = out.send(event).await;
                }
            }
            said
        };
        let (result, said) = tokio::join!(run, take);
        let cancelled = registered.cancel.is_cancelled();
        Driven {
            interrupted: cancelled && self.stopping.is_cancelled(),
            result: match result {
                // Told to stop, the agent failed on the way out: the turn was cancelled all the
                // same, with what it had said.
                Err(AgentError::Failed(why)) if cancelled => {
                    tracing::warn!(error = %why, "the agent failed after a cancel");
                    Ok(TurnEnd {
                        output: said,
                        stop_reason: StopReason::Cancelled,
                    })
                }
                other => other,
            },
            duration_ms: started.elapsed().as_millis() as u64,
        }
    }

    /// Records how the turn ended and makes its reply.
    #[tracing::instrument(name = "finish", skip_all, fields(turn = b.turn))]
    async fn finish(&self, t: &Accepted, b: &Begun, d: Driven) -> Result<wire::Turn> {
        let result = d.result.map_err(Error::from);
        let detail = self.turn_detail(b.turn, &result, d.duration_ms, d.interrupted);
        self.ledger
            .finish_turn(t.row.session_id.clone(), b.event_id, now(), detail)
            .await
            .map_err(Error::internal)?;
        match result {
            Ok(end) => Ok(wire::Turn {
                session_id: t.row.session_id.clone(),
                turn: b.turn,
                output: end.output,
                stop_reason: end.stop_reason.as_str().to_string(),
                duration_ms: d.duration_ms,
            }),
            Err(err) => {
                if err.kind == ErrorKind::Timeout {
                    tracing::info!("turn timed out");
                } else {
                    tracing::warn!(error = %err, "turn failed");
                }
                Err(err)
            }
        }
    }

    /// The ledger's record of a turn's end. A turn cancelled because the worker is stopping is
    /// `interrupted`, with what it had.
    fn turn_detail(
        &self,
        turn: u64,
        result: &Result<TurnEnd>,
        duration_ms: u64,
        interrupted: bool,
    ) -> EventDetail {
        let keep = self.settings.ledger_keep_text;
        let base = EventDetail {
            turn: Some(turn),
            duration_ms: Some(duration_ms),
            ..Default::default()
        };
        match result {
            Ok(end) => EventDetail {
                outcome: if interrupted { "interrupted" } else { "ok" }.into(),
                stop_reason: Some(end.stop_reason.as_str().to_string()),
                output: Some(Recorded::of(&end.output, keep)),
                error: interrupted.then(|| SHUT_DOWN_RUNNING.to_string()),
                ..base
            },
            Err(err) => EventDetail {
                outcome: if interrupted {
                    "interrupted".to_string()
                } else {
                    err.kind.code().to_string()
                },
                error: Some(err.message.clone()),
                ..base
            },
        }
    }

    /// Cancels the turn of `session_id` this worker runs, if it runs one: it answers
    /// `cancelled`. `why` says what asked for it, in the log.
    pub(super) fn cancel_running_turn(&self, session_id: &str, why: &str) -> bool {
        let cancelled = self.running_turns.cancel(session_id);
        if cancelled {
            tracing::info!(session = %session_id, why, "turn cancelled");
        }
        cancelled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_errors_map_to_the_contract_kinds() {
        assert_eq!(Error::from(AgentError::Timeout).kind, ErrorKind::Timeout);
        let unavailable = AgentError::Unavailable {
            program: "acpx".into(),
            reason: "No such file or directory".into(),
        };
        let e = Error::from(unavailable);
        assert_eq!(e.kind, ErrorKind::AgentError);
        assert!(!e.message.contains("No such file"), "{}", e.message);
        let e = Error::from(AgentError::Failed("boom".into()));
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::AgentError, "boom")
        );
        assert_eq!(StopReason::parse("cancelled"), StopReason::Cancelled);
    }

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
