//! One `session/prompt` on a native connection: its events into the sink as they come, until
//! the agent's answer; a cancel or the deadline sends `session/cancel` (answering every
//! permission request still waiting `cancelled`) and waits `CANCEL_GRACE` for the answer.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use agent_client_protocol::v1::schema::{
    CancelNotification, ContentBlock, PromptRequest, PromptResponse, SessionId, TextContent,
};
use tokio::sync::mpsc;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use super::asks::TurnAsks;
use super::host::Live;
use crate::agent::backend::{
    AgentError, AgentSession, EventSink, Prompt, StopReason, TurnEnd, CANCEL_GRACE,
};
use crate::agent::def::PermissionPolicy;
use crate::agent::fault::Phase;
use crate::agent::updates;
use crate::wire::{DecidedBy, EventBody};

/// How often a cancel is said again while the agent has not answered the prompt.
const CANCEL_AGAIN: Duration = Duration::from_millis(250);

/// The agent's answer to a prompt; `None` when it did not answer a cancel within the grace.
type Answer = Option<Result<PromptResponse, agent_client_protocol::Error>>;

/// Sends prompt `p` to the agent's session `id` and runs the turn to its end.
pub(super) async fn prompt(
    live: &Live,
    id: &SessionId,
    s: &AgentSession,
    p: &Prompt<'_>,
    permission_timeout: Duration,
) -> Result<TurnEnd, AgentError> {
    let (asks, to_asks) =
        TurnAsks::new(live.routes.waiting.clone(), id.clone(), permission_timeout);
    let asking = p.followed && s.permissions == PermissionPolicy::Ask;
    let (_route, events) = live
        .routes
        .open(id, s.permissions, asking.then_some(to_asks));
    let text = ContentBlock::Text(TextContent::new(p.text.to_string()));
    let request = live
        .cx
        .send_request(PromptRequest::new(id.clone(), vec![text]))
        .block_task();
    let mut turn = Prompting {
        live,
        id,
        sink: &p.sink,
        cancel: p.cancel,
        deadline: p.deadline,
        asks,
        events,
        output: updates::Output::default(),
        cancelled: false,
        timed_out: false,
    };
    let answer = turn.answer(request).await?;
    let (output, timed_out) = turn.finish().await;
    let stop_reason = stop_reason(live, answer).await?;
    if timed_out {
        return Err(AgentError::Timeout);
    }
    Ok(TurnEnd {
        output,
        stop_reason,
    })
}

/// A prompt under way: where its events come from and go, and how far its cancel has got.
struct Prompting<'a> {
    live: &'a Live,
    id: &'a SessionId,
    sink: &'a EventSink,
    cancel: &'a CancellationToken,
    deadline: Instant,
    asks: TurnAsks,
    /// The turn's updates, as its route passes them on.
    events: mpsc::UnboundedReceiver<EventBody>,
    output: updates::Output,
    cancelled: bool,
    timed_out: bool,
}

impl Prompting<'_> {
    /// Waits for the agent's answer, the turn's events and asks into the sink meanwhile. A
    /// cancel, or the deadline, is said to the agent and again until it answers (one that came
    /// while the agent was still setting the prompt up may have gone unheard), for at most
    /// `CANCEL_GRACE`.
    async fn answer<F>(&mut self, request: F) -> Result<Answer, AgentError>
    where
        F: Future<Output = Result<PromptResponse, agent_client_protocol::Error>>,
    {
        tokio::pin!(request);
        let mut stop = Box::pin(tokio::time::sleep_until(self.deadline.into()));
        let mut again = tokio::time::interval(CANCEL_AGAIN);
        loop {
            tokio::select! {
                biased;
                Some(event) = self.events.recv() => self.emit(event).await,
                answer = &mut request => return Ok(Some(answer)),
                event = self.asks.next_event() => self.sink.emit(event).await,
                _ = self.cancel.cancelled(), if !self.cancelled => {
                    self.cancelled = true;
                    stop = self.stop(DecidedBy::Caller);
                }
                _ = again.tick(), if self.cancelled => self.say_cancel(),
                _ = &mut stop => {
                    if self.cancelled {
                        return Ok(None);
                    }
                    (self.cancelled, self.timed_out) = (true, true);
                    stop = self.stop(DecidedBy::Timeout);
                }
                _ = self.live.ended.cancelled() => {
                    return Err(self.live.exited(Phase::Turn).await);
                }
            }
        }
    }

    /// After the answer: the updates sent before it are already queued and belong to the turn;
    /// the requests still waiting are answered `cancelled`. The output, and whether the turn
    /// timed out.
    async fn finish(mut self) -> (String, bool) {
        while let Ok(event) = self.events.try_recv() {
            self.emit(event).await;
        }
        for event in self.asks.finish(DecidedBy::Caller).await {
            self.sink.emit(event).await;
        }
        (self.output.finish(), self.timed_out)
    }

    async fn emit(&mut self, event: EventBody) {
        self.output.add(&event);
        self.sink.emit(event).await;
    }

    /// Stops the turn (`by` the caller or its timeout): its asks, and the agent; the grace.
    fn stop(&mut self, by: DecidedBy) -> Pin<Box<Sleep>> {
        self.asks.stop(by);
        self.say_cancel();
        Box::pin(tokio::time::sleep(CANCEL_GRACE))
    }

    fn say_cancel(&self) {
        let _ = self
            .live
            .cx
            .send_notification(CancelNotification::new(self.id.clone()));
    }
}

/// How the prompt ended: the agent's stop reason, `cancelled` when it did not answer a cancel
/// within the grace, or why it failed.
async fn stop_reason(live: &Live, answer: Answer) -> Result<StopReason, AgentError> {
    match answer {
        None => Ok(StopReason::Cancelled),
        Some(Ok(r)) => {
            let said = serde_json::to_value(r.stop_reason).unwrap_or_default();
            Ok(StopReason::parse(said.as_str().unwrap_or("end_turn")))
        }
        Some(Err(e)) => Err(live.refused("session/prompt", Phase::Turn, &e).await),
    }
}
