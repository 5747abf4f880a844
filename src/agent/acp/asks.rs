//! Permission requests the policy leaves to the caller (`permissions = "ask"`): each is the
//! turn's `permission_request` event, and is answered by the caller (`forge.session.permission`),
//! rejected when no answer comes in time, or answered `cancelled` when the turn is cancelled
//! (ACP requires that every request still waiting then is). The decision is a `permission` event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_client_protocol::v1::schema::{
    RequestPermissionOutcome, RequestPermissionResponse, SelectedPermissionOutcome, SessionId,
};
use agent_client_protocol::v1::Responder;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::agent::backend::Answer;
use crate::agent::def::PermissionPolicy;
use crate::agent::permission;
use crate::wire::{DecidedBy, EventBody, PermissionDecision};

/// A permission request of the agent's, with the way to answer it.
pub struct Asked {
    /// The request as ACP's JSON.
    pub request: Value,
    pub responder: Responder<RequestPermissionResponse>,
}

/// The requests of one agent process that wait for a caller's answer, by request id.
#[derive(Default)]
pub struct Waiting(Mutex<HashMap<String, Slot>>);

struct Slot {
    session: String,
    offered: Vec<String>,
    answer: oneshot::Sender<String>,
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The caller's answer `option_id` to request `request_id` of the agent's session `session`.
    pub fn answer(&self, session: &SessionId, request_id: &str, option_id: &str) -> Answer {
        let mut slots = self.lock();
        match slots.get(request_id) {
            Some(slot) if slot.session == session.to_string() => {
                if !slot.offered.iter().any(|o| o == option_id) {
                    return Answer::UnknownOption {
                        offered: slot.offered.clone(),
                    };
                }
                let slot = slots.remove(request_id).expect("found above");
                match slot.answer.send(option_id.to_string()) {
                    Ok(()) => Answer::Taken,
                    Err(_) => Answer::NotWaiting,
                }
            }
            _ => Answer::NotWaiting,
        }
    }
}

/// How a request was decided.
enum Verdict {
    Chosen(String),
    TimedOut,
    Cancelled,
}

/// A request decided, still to be answered.
struct Decided {
    asked: Asked,
    verdict: Verdict,
}

/// The requests one turn asks its caller: fed by the turn's route, decided as they come.
pub struct TurnAsks {
    waiting: Arc<Waiting>,
    session: SessionId,
    timeout: Duration,
    incoming: mpsc::UnboundedReceiver<Asked>,
    pending: FuturesUnordered<BoxFuture<'static, Decided>>,
    stop: CancellationToken,
    /// Who stopped the turn, for the requests cancelled with it.
    stopped_by: DecidedBy,
}

impl TurnAsks {
    /// The asks of a turn of `session`, and where its route sends them.
    pub fn new(
        waiting: Arc<Waiting>,
        session: SessionId,
        timeout: Duration,
    ) -> (TurnAsks, mpsc::UnboundedSender<Asked>) {
        let (tx, incoming) = mpsc::unbounded_channel();
        let asks = TurnAsks {
            waiting,
            session,
            timeout,
            incoming,
            pending: FuturesUnordered::new(),
            stop: CancellationToken::new(),
            stopped_by: DecidedBy::Caller,
        };
        (asks, tx)
    }

    /// The next event of the turn's asks: a request asked, or one decided and answered.
    /// Never ends while nothing happens.
    pub async fn next_event(&mut self) -> EventBody {
        tokio::select! {
            Some(asked) = self.incoming.recv() => self.ask(asked),
            Some(decided) = self.pending.next(), if !self.pending.is_empty() => {
                self.settle(decided)
            }
            else => std::future::pending().await,
        }
    }

    /// The turn is being cancelled (`by` the caller, or by its timeout): every request waiting
    /// is answered `cancelled`.
    pub fn stop(&mut self, by: DecidedBy) {
        if !self.stop.is_cancelled() {
            self.stopped_by = by;
            self.stop.cancel();
        }
    }

    /// At the turn's end: what still waits is answered `cancelled`; their events.
    pub async fn finish(mut self, by: DecidedBy) -> Vec<EventBody> {
        self.stop(by);
        self.incoming.close();
        let mut events = Vec::new();
        while let Ok(asked) = self.incoming.try_recv() {
            events.push(self.ask(asked));
        }
        while let Some(decided) = self.pending.next().await {
            events.push(self.settle(decided));
        }
        events
    }

    /// Asks the caller: the `permission_request` event, and a wait for the answer.
    fn ask(&mut self, asked: Asked) -> EventBody {
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let options = permission::options(&asked.request);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().insert(
            request_id.clone(),
            Slot {
                session: self.session.to_string(),
                offered: options.iter().map(|o| o.option_id.clone()).collect(),
                answer: tx,
            },
        );
        let (title, tool_call_id) = permission::tool_call(&asked.request);
        let event = EventBody::PermissionRequest {
            request_id: request_id.clone(),
            title,
            tool_call_id,
            options,
        };
        let (waiting, stop, timeout) = (self.waiting.clone(), self.stop.clone(), self.timeout);
        self.pending.push(Box::pin(async move {
            let mut rx = rx;
            let mut verdict = tokio::select! {
                biased;
                _ = stop.cancelled() => Verdict::Cancelled,
                chosen = &mut rx => chosen.map_or(Verdict::Cancelled, Verdict::Chosen),
                _ = tokio::time::sleep(timeout) => Verdict::TimedOut,
            };
            // Decided under the lock: an answer the caller was told was taken is the answer.
            if waiting.lock().remove(&request_id).is_none() {
                if let Ok(chosen) = rx.try_recv() {
                    verdict = Verdict::Chosen(chosen);
                }
            }
            Decided { asked, verdict }
        }));
        event
    }

    /// Answers the agent as decided; the `permission` event.
    fn settle(&self, d: Decided) -> EventBody {
        let request = &d.asked.request;
        let (outcome, decision, by) = match d.verdict {
            Verdict::Chosen(option) => {
                let decision = permission::decision_of_kind(&permission::kind_of(request, &option));
                let chosen = SelectedPermissionOutcome::new(option);
                (
                    RequestPermissionOutcome::Selected(chosen),
                    decision,
                    DecidedBy::Caller,
                )
            }
            Verdict::TimedOut => {
                let (outcome, decision) = by_policy(PermissionPolicy::DenyAll, request);
                (outcome, decision, DecidedBy::Timeout)
            }
            Verdict::Cancelled => (
                RequestPermissionOutcome::Cancelled,
                PermissionDecision::Cancelled,
                self.stopped_by,
            ),
        };
        if let Err(e) = d
            .asked
            .responder
            .respond(RequestPermissionResponse::new(outcome))
        {
            tracing::debug!(error = %e, "answering a permission request failed");
        }
        permission::event(request, decision, by)
    }
}

/// The answer `policy` gives to a permission request (as ACP's JSON): the option it selects,
/// or `cancelled` when the request offers none of the right kind.
pub(super) fn by_policy(
    policy: PermissionPolicy,
    request: &Value,
) -> (RequestPermissionOutcome, PermissionDecision) {
    match permission::by_policy(policy, request) {
        Some((option, decision)) => (
            RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new(option)),
            decision,
        ),
        None => (
            RequestPermissionOutcome::Cancelled,
            PermissionDecision::Cancelled,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_answers_with_its_option_or_cancelled() {
        let mut request = serde_json::json!({
            "toolCall": {"toolCallId": "c1", "kind": "execute"},
            "options": [
                {"optionId": "yes", "kind": "allow_once"},
                {"optionId": "no", "kind": "reject_once"}
            ]
        });
        match by_policy(PermissionPolicy::DenyAll, &request) {
            (RequestPermissionOutcome::Selected(s), PermissionDecision::Rejected) => {
                assert_eq!(s.option_id.to_string(), "no")
            }
            other => panic!("{other:?}"),
        }
        request["options"].as_array_mut().unwrap().pop();
        assert!(matches!(
            by_policy(PermissionPolicy::DenyAll, &request),
            (
                RequestPermissionOutcome::Cancelled,
                PermissionDecision::Cancelled
            )
        ));
    }
}
