//! One turn of a session, in four steps: admit (checks, the session's earlier turns, a slot),
//! begin (the files, the ledger's `running` row), drive (the agent backend, its events, the
//! cancellation), finish (the ledger's outcome, the reply).

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, OwnedMutexGuard, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::cancel::Registered;
use super::events::TurnEvents;
use super::files::{self, Attachment};
use super::request::TurnAsked;
use super::taken::{SessionLock, Taken};
use super::tally::TurnTally;
use super::types::Prompt;
use super::{Caller, Forge};
use crate::agent::{self, AgentError, EventSink, StopReason, TurnEnd};
use crate::config::BackendKind;
use crate::error::{Error, ErrorKind, Result};
use crate::ledger::{
    BeginTurn, EventDetail, EventOutcome, Recorded, SessionRow, Stamp, TurnStart, Turns,
};
use crate::values::Timestamp;
use crate::wire;

/// How often a turn waiting for another worker's turn of its session looks again.
const OTHER_WORKER_POLL: Duration = Duration::from_millis(100);

/// Why a turn cancelled at shutdown ended, in the ledger.
const SHUT_DOWN_RUNNING: &str = "the worker shut down during the turn; it was cancelled";

/// How many of a turn's events may wait for the domain to take them.
const EVENT_BUFFER: usize = 256;

impl From<AgentError> for Error {
    fn from(e: AgentError) -> Error {
        match e {
            AgentError::Timeout => Error::timeout("the agent did not finish within the timeout"),
            AgentError::Unavailable { .. } => {
                tracing::error!(error = %e, "the agent runner could not be started");
                Error::agent("the agent runner (acpx) is not available on this worker")
            }
            AgentError::Failed(message) => Error::agent(message),
            AgentError::Fault(fault) => Error::agent(fault.to_string()),
        }
    }
}

/// A turn this worker took: checked, its session open, its budget counting from `received`.
struct Accepted {
    row: SessionRow,
    /// The limits of the caller's app.
    limits: std::sync::Arc<crate::quota::Limits>,
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

/// A turn that holds its session in this worker: the session's lock, and its place in the
/// registry, which makes it the session's current turn for a cancel.
struct Admission<'a> {
    _session: OwnedMutexGuard<()>,
    registered: Registered<'a>,
}

/// A turn the ledger records as running.
struct Begun {
    turn: u64,
    event_id: i64,
    /// The prompt as the agent gets it, with the attached files listed ahead.
    text: String,
    /// `None` for a turn cancelled before it got one: it does not run.
    _slot: Option<OwnedSemaphorePermit>,
}

/// How the agent's part of a turn went.
struct Driven {
    result: std::result::Result<TurnEnd, AgentError>,
    duration_ms: u64,
    /// Ended by the worker's shutdown rather than by the agent or the caller.
    interrupted: bool,
    /// What the agent reported the session had cost by the turn's end.
    cost_usd: Option<f64>,
    /// The turn's figures, for the metrics.
    tally: TurnTally,
}

/// Where a live turn's events go as they happen (the transport's stream), numbered and dated.
pub type EventStream = mpsc::Sender<wire::Event>;

impl Forge {
    pub async fn turn(&self, caller: &Caller, req: TurnAsked) -> Result<wire::Turn> {
        self.live_turn(caller, req, None, None).await
    }

    /// A turn whose events also go to `events` as they happen, before its reply (a stream
    /// nobody reads any more does not stop the turn), and whose number goes to `numbered` as
    /// soon as it is taken (`"wait": false`).
    pub async fn live_turn(
        &self,
        caller: &Caller,
        req: TurnAsked,
        events: Option<EventStream>,
        numbered: Option<oneshot::Sender<wire::TurnAccepted>>,
    ) -> Result<wire::Turn> {
        let mut accepted = self.accept(caller, req).await?;
        let attachments = std::mem::take(&mut accepted.attachments);
        let span =
            tracing::info_span!("turn", session = %accepted.row.session_id, app = %caller.app);
        async {
            let mut taken = self.take_turn(&accepted.row, &accepted.limits).await?;
            if let Some(numbered) = numbered {
                let _ = numbered.send(taken.reply(&accepted.row.session_id.to_string()));
            }
            let started = self.start(caller, &mut accepted, &mut taken, attachments);
            let (admission, begun) = match started.await {
                Ok(started) => started,
                Err(err) => {
                    taken.abandon(&err).await;
                    return Err(err);
                }
            };
            let cancel = &admission.registered.cancel;
            let driven = self.drive(&accepted, &begun, cancel, events).await;
            self.finish(&accepted, &begun, driven).await
        }
        .instrument(span)
        .await
    }

    /// From taken to begun: the session's earlier turns, a slot, the ledger's running row.
    async fn start<'a>(
        &'a self,
        caller: &Caller,
        accepted: &mut Accepted,
        taken: &mut Taken<'a>,
        attachments: Vec<Attachment>,
    ) -> Result<(Admission<'a>, Begun)> {
        let admission = self.admit_turn(accepted, taken).await?;
        let cancel = &admission.registered.cancel;
        let begun = self
            .begin(caller, accepted, taken, cancel, attachments)
            .await?;
        Ok((admission, begun))
    }

    /// The request's checks, and its session, open and the caller's.
    async fn accept(&self, caller: &Caller, req: TurnAsked) -> Result<Accepted> {
        let id = req.session_id;
        let prompt = Prompt::parse(req.prompt, self.settings.max_prompt_bytes)?;
        let timeout = self.timeout_within(req.timeout_secs, &caller.limits)?;
        let attachments = self.attachments(&req.files)?;
        let row = self.owned_session(caller, &id).await?;
        if !row.open {
            return Err(Error::conflict("the session is closed"));
        }
        Ok(Accepted {
            row,
            limits: caller.limits.clone(),
            prompt,
            attachments,
            received: Instant::now(),
            budget: Duration::from_secs(timeout),
        })
    }

    /// Waits for the session's earlier turns in this worker, within the turn's budget, holding
    /// a place in the queue meanwhile; then the turn is the session's current one.
    #[tracing::instrument(name = "admit", skip_all)]
    async fn admit_turn<'a>(
        &'a self,
        t: &Accepted,
        taken: &mut Taken<'a>,
    ) -> Result<Admission<'a>> {
        let session_id = &t.row.session_id.to_string();
        let session = match taken.lock.take() {
            Some(SessionLock::Held(session)) => session,
            Some(SessionLock::Queued(queued)) => {
                // Its place in the worker's queue is `taken.place`, held while it waits.
                tracing::debug!("turn waiting for the session's earlier turn");
                self.admit(t.received, t.budget, async { Ok(queued.await) })
                    .await?
            }
            None => {
                let lock = async { Ok(self.session_locks.lock(session_id).await) };
                self.admit(t.received, t.budget, lock).await?
            }
        };
        Ok(Admission {
            _session: session,
            registered: Registered::new(&self.running_turns, session_id),
        })
    }

    /// A slot to run in, within the turn's budget; `None` once the turn is cancelled.
    async fn slot(
        &self,
        t: &Accepted,
        taken: &mut Taken<'_>,
        cancel: &CancellationToken,
    ) -> Result<Option<OwnedSemaphorePermit>> {
        let place = taken.place.take();
        self.admit(t.received, t.budget, async {
            let slot = async {
                match place {
                    Some(place) => self.turns.acquire_in_place(place).await,
                    None => self.turns.acquire().await,
                }
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => Ok(None),
                slot = slot => slot.map(Some),
            }
        })
        .await
    }

    /// Writes the attached files, takes a slot and has the ledger start the turn, unless
    /// another worker is running one of this session: then this one waits for it, within its
    /// budget, without holding a slot. (A ledger call is never abandoned half-way: it could
    /// record a turn that nothing then runs.)
    #[tracing::instrument(name = "begin", skip_all)]
    async fn begin(
        &self,
        caller: &Caller,
        t: &mut Accepted,
        taken: &mut Taken<'_>,
        cancel: &CancellationToken,
        attachments: Vec<Attachment>,
    ) -> Result<Begun> {
        let cwd = std::path::Path::new(&t.row.cwd);
        let written = files::write(cwd, attachments)
            .await
            .map_err(Error::internal)?;
        let recorded = Recorded::of(t.prompt.as_str(), self.settings.ledger_keep_text);
        let (mut begun, mut listed) = self
            .begin_in_ledger(caller, t, taken, cancel, recorded)
            .await?;
        for p in written {
            let p = p.to_string_lossy().into_owned();
            if !listed.contains(&p) {
                listed.push(p);
            }
        }
        begun.text = files::with_header(&listed, t.prompt.as_str());
        Ok(begun)
    }

    /// Takes a slot and has the ledger start the turn; while another worker runs a turn of the
    /// session, waits for it without the slot and tries again. The turn begun (its text still
    /// empty) and the files attached at create.
    async fn begin_in_ledger(
        &self,
        caller: &Caller,
        t: &Accepted,
        taken: &mut Taken<'_>,
        cancel: &CancellationToken,
        recorded: Recorded,
    ) -> Result<(Begun, Vec<String>)> {
        let mut logged = false;
        loop {
            let slot = self.slot(t, taken, cancel).await?;
            let begun = self
                .ledger
                .begin_turn(TurnStart {
                    session_id: t.row.session_id,
                    app: caller.app.to_string(),
                    by: Stamp::now(&self.settings.worker_id),
                    prompt: recorded.clone(),
                    alive_since: Timestamp::seconds_from_now(-self.dead_after_secs()),
                    wait_id: taken.wait_id(),
                })
                .await?;
            match begun {
                BeginTurn::Started {
                    turn,
                    event_id,
                    pending_files,
                } => {
                    taken.began();
                    let text = String::new();
                    let begun = Begun {
                        turn,
                        event_id,
                        text,
                        _slot: slot,
                    };
                    return Ok((begun, pending_files));
                }
                BeginTurn::NotFound => return Err(Error::not_found("no such session")),
                BeginTurn::Closed => return Err(Error::conflict("the session is closed")),
                BeginTurn::Busy => {
                    drop(slot);
                    if !std::mem::replace(&mut logged, true) {
                        tracing::debug!("turn waiting for another worker's turn of the session");
                    }
                    self.pause_before_retry(OTHER_WORKER_POLL, t.received, t.budget)
                        .await?;
                }
            }
        }
    }

    /// Runs the turn on the agent backend, cancellable through the registry of running turns,
    /// and takes its events as they come.
    #[tracing::instrument(name = "drive", skip_all, fields(turn = b.turn))]
    async fn drive(
        &self,
        t: &Accepted,
        b: &Begun,
        cancel: &CancellationToken,
        out: Option<EventStream>,
    ) -> Driven {
        let started = Instant::now();
        if cancel.is_cancelled() {
            // Cancelled before it started: the agent never hears of it.
            return Driven {
                result: Ok(TurnEnd {
                    output: String::new(),
                    stop_reason: StopReason::Cancelled,
                }),
                duration_ms: 0,
                interrupted: self.stopping.is_cancelled(),
                cost_usd: None,
                tally: self.tally_of(&t.row),
            };
        }
        let session = self.agent_session_under(&t.row, &t.limits);
        if session.backend == BackendKind::Acpx {
            self.hosted.insert(t.row.session_id);
        }
        let (sink, mut events) = EventSink::channel(EVENT_BUFFER);
        let prompt = agent::Prompt {
            text: &b.text,
            turn: b.turn,
            sink,
            cancel,
            deadline: t.deadline(),
            followed: out.is_some(),
        };
        let run = self.agent.prompt(&session, prompt);
        let tally = TurnTally::invoked(&t.row.agent, session.backend.as_str(), &b.text);
        let span = tally.span();
        let id = t.row.session_id.to_string();
        let recorded = TurnEvents::new(self, &id, b.turn, out, tally);
        let joined = async { tokio::join!(run, take_events(recorded, &mut events)) };
        let (result, (said, cost_usd, tally)) = joined.instrument(span).await;
        let cancelled = cancel.is_cancelled();
        Driven {
            cost_usd,
            tally,
            interrupted: cancelled && self.stopping.is_cancelled(),
            result: match result {
                // Told to stop, the agent failed on the way out: the turn was cancelled all the
                // same, with what it had said.
                Err(why @ (AgentError::Failed(_) | AgentError::Fault(_))) if cancelled => {
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

    /// A tally for a turn of `row`'s session that never reached its agent.
    fn tally_of(&self, row: &SessionRow) -> TurnTally {
        TurnTally::new(&row.agent, self.agent_session(row).backend.as_str())
    }

    /// Records how the turn ended and makes its reply.
    #[tracing::instrument(name = "finish", skip_all, fields(turn = b.turn))]
    async fn finish(&self, t: &Accepted, b: &Begun, d: Driven) -> Result<wire::Turn> {
        let result = d.result.map_err(Error::from);
        let mut detail = self.turn_detail(b.turn, &result, d.duration_ms, d.interrupted);
        detail.reported_cost_usd = d.cost_usd;
        let outcome = turn_outcome(&result, d.interrupted);
        let cost = self
            .ledger
            .finish_turn(t.row.session_id, b.event_id, Timestamp::now(), detail)
            .await?;
        if let Some(usd) = cost {
            crate::telemetry::agent_cost(&t.row.app, d.tally.agent(), usd);
        }
        let output = result.as_ref().map(|end| end.output.as_str()).unwrap_or("");
        let seconds = d.duration_ms as f64 / 1000.0;
        d.tally.ended(outcome, result.is_err(), seconds, output);
        match result {
            Ok(end) => Ok(wire::Turn {
                session_id: t.row.session_id.to_string(),
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
        let ended = |outcome| EventDetail {
            turn: Some(turn),
            duration_ms: Some(duration_ms),
            ..EventDetail::of(outcome)
        };
        match result {
            Ok(end) => EventDetail {
                stop_reason: Some(end.stop_reason.as_str().to_string()),
                output: Some(Recorded::of(&end.output, keep)),
                error: interrupted.then(|| SHUT_DOWN_RUNNING.to_string()),
                ..ended(match (interrupted, &end.stop_reason) {
                    (true, _) => EventOutcome::Interrupted,
                    (false, StopReason::Cancelled) => EventOutcome::Cancelled,
                    (false, _) => EventOutcome::Ok,
                })
            },
            Err(err) => EventDetail {
                error: Some(err.message.clone()),
                ..ended(if interrupted {
                    EventOutcome::Interrupted
                } else {
                    EventOutcome::Failed(err.kind)
                })
            },
        }
    }
}

/// A turn's outcome as the metrics label it: its stop reason (`interrupted` when the worker
/// stopped it), or its error's kind.
fn turn_outcome(result: &Result<TurnEnd>, interrupted: bool) -> &'static str {
    match result {
        Ok(_) if interrupted => "interrupted",
        Ok(end) => match end.stop_reason {
            StopReason::EndTurn => "end_turn",
            StopReason::MaxTokens => "max_tokens",
            StopReason::MaxTurnRequests => "max_turn_requests",
            StopReason::Refusal => "refusal",
            StopReason::Cancelled => "cancelled",
            StopReason::Other(_) => "other",
        },
        Err(err) => err.kind.code(),
    }
}

/// Sleeps until `due`; never ends without one.
async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Takes a turn's events as the agent gives them into `recorded` (the ledger, in batches, and
/// the caller's stream); what the agent said, once it is done.
async fn take_events(
    mut recorded: TurnEvents<'_>,
    events: &mut mpsc::Receiver<wire::EventBody>,
) -> (String, Option<f64>, TurnTally) {
    loop {
        let due = recorded.due();
        tokio::select! {
            body = events.recv() => match body {
                Some(body) => recorded.take(body).await,
                None => break,
            },
            _ = sleep_until(due), if due.is_some() => recorded.flush().await,
        }
    }
    recorded.flush().await;
    recorded.said()
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
}
