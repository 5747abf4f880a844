//! A turn's events: numbered, sent on live, and recorded in the ledger in batches as they come;
//! then replayed and followed from the ledger by any worker (`forge.session.events`).

use std::time::Duration;

use tokio::time::Instant;

use super::request::FollowAsked;
use super::tally::TurnTally;
use super::types::SessionId;
use super::{now, Caller, EventStream, Forge};
use crate::error::{Error, ErrorKind, Result};
use crate::ledger::{EventOutcome, TurnRow, Turns};
use crate::wire::{self, EventBody};

/// Events recorded in one transaction at most.
const BATCH: usize = 64;
/// How long an event may wait for its batch to be recorded: a follower on another worker sees
/// it within this (plus its poll).
const BATCH_WAIT: Duration = Duration::from_millis(200);
/// How often a follower of a running turn looks for new events.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// How much of a turn's message text is kept for a turn that ends without the backend's own
/// output (a cancelled turn whose agent failed on the way out).
const MAX_SAID: usize = 768 * 1024;

/// The events of one running turn.
pub(super) struct TurnEvents<'a> {
    forge: &'a Forge,
    session_id: String,
    turn: u64,
    seq: u64,
    said: String,
    /// The cost the agent reported last (ACP's `usage` cost is the session's, so far).
    cost_usd: Option<f64>,
    batch: Vec<wire::Event>,
    /// When the oldest event of the batch must be recorded.
    due: Option<Instant>,
    out: Option<EventStream>,
    tally: TurnTally,
}

impl<'a> TurnEvents<'a> {
    pub(super) fn new(
        forge: &'a Forge,
        session_id: &str,
        turn: u64,
        out: Option<EventStream>,
        tally: TurnTally,
    ) -> Self {
        TurnEvents {
            tally,
            forge,
            session_id: session_id.to_string(),
            turn,
            seq: 0,
            said: String::new(),
            cost_usd: None,
            batch: Vec::new(),
            due: None,
            out,
        }
    }

    /// Numbers and dates an event of the agent, sends it on, and adds it to the batch.
    pub(super) async fn take(&mut self, body: EventBody) {
        self.tally.saw(&body);
        match &body {
            EventBody::Message { text } if self.said.len() + text.len() <= MAX_SAID => {
                self.said.push_str(text);
            }
            EventBody::Usage {
                cost_usd: Some(cost),
                ..
            } if cost.is_finite() && *cost >= 0.0 => self.cost_usd = Some(*cost),
            _ => {}
        }
        self.seq += 1;
        let event = wire::Event {
            session_id: Some(self.session_id.clone()),
            turn: Some(self.turn),
            run_id: None,
            seq: self.seq,
            at: now(),
            body,
        };
        if let Some(out) = &self.out {
            // A stream nobody reads any more does not stop the turn.
            let _ = out.send(event.clone()).await;
        }
        self.batch.push(self.kept(event));
        self.due.get_or_insert_with(|| Instant::now() + BATCH_WAIT);
        if self.batch.len() >= BATCH {
            self.flush().await;
        }
    }

    /// The event as the ledger keeps it: message and thought text only per `ledger_keep_text`.
    fn kept(&self, mut event: wire::Event) -> wire::Event {
        if !self.forge.settings.ledger_keep_text {
            if let EventBody::Message { text } | EventBody::Thought { text } = &mut event.body {
                text.clear();
            }
        }
        event
    }

    /// When the batch must be recorded, if it holds anything.
    pub(super) fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Records the batch, in one transaction.
    pub(super) async fn flush(&mut self) {
        self.due = None;
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        if let Err(e) = self.forge.ledger.record_events(batch).await {
            tracing::error!(error = %e, "could not record a turn's events");
        }
    }

    /// The message text the agent said, the cost it reported last, and the turn's figures.
    pub(super) fn said(self) -> (String, Option<f64>, TurnTally) {
        (self.said, self.cost_usd, self.tally)
    }
}

impl Forge {
    /// `forge.session.events`: the recorded events of a turn after `after`, then, while it
    /// runs, its new events as they are recorded; returns how the turn ended.
    pub async fn follow_turn(
        &self,
        caller: &Caller,
        req: FollowAsked,
        out: EventStream,
    ) -> Result<wire::Turn> {
        let id = req.session_id;
        let row = self.watched_session(caller, &id).await?;
        let turn = match req.turn {
            Some(turn) => turn,
            None => self
                .ledger
                .latest_turn(row.session_id)
                .await?
                .ok_or_else(no_turn)?,
        };
        let mut after = req.after.unwrap_or(0);
        loop {
            let ended = self.ledger.turn_row(row.session_id, turn).await?;
            let ended = ended.ok_or_else(no_turn)?;
            // Read after the row: a turn's last events are recorded before it ends.
            after = self.send_events(row.session_id, turn, after, &out).await?;
            if !ended.running() {
                return turn_reply(row.session_id, turn, ended);
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = self.stopping.cancelled() => {
                    return Err(Error::at_capacity("the worker shut down; ask again to go on"));
                }
                _ = out.closed() => return Err(Error::internal("the follower went away")),
            }
        }
    }

    /// Sends the recorded events after `after`; returns the last `seq` sent.
    async fn send_events(
        &self,
        session_id: SessionId,
        turn: u64,
        mut after: u64,
        out: &EventStream,
    ) -> Result<u64> {
        loop {
            let events = self.ledger.events_after(session_id, turn, after).await?;
            let Some(last) = events.last() else {
                return Ok(after);
            };
            after = last.seq;
            for event in events {
                let _ = out.send(event).await;
            }
        }
    }
}

fn no_turn() -> Error {
    Error::not_found("no such turn")
}

/// The final message of a replay: the Turn, or the error it ended with.
fn turn_reply(session_id: SessionId, turn: u64, row: TurnRow) -> Result<wire::Turn> {
    let stop_reason = match row.outcome {
        EventOutcome::Ok | EventOutcome::Cancelled | EventOutcome::Interrupted => {
            row.stop_reason.clone()
        }
        _ => None,
    };
    match stop_reason {
        Some(stop_reason) => Ok(wire::Turn {
            session_id: session_id.to_string(),
            turn,
            output: row.output.unwrap_or_default(),
            stop_reason,
            duration_ms: row.duration_ms.unwrap_or(0),
        }),
        None => {
            let kind = match row.outcome {
                // Its worker stopped before it ended.
                EventOutcome::Interrupted => ErrorKind::AtCapacity,
                EventOutcome::Failed(kind) => kind,
                _ => ErrorKind::Internal,
            };
            let message = row
                .error
                .unwrap_or_else(|| format!("the turn ended: {}", row.outcome));
            Err(Error::new(kind, message))
        }
    }
}
