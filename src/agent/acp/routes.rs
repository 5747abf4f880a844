//! Where an agent process's updates and permission requests go: to the running turn of their
//! session, as the contract's events. Called from the connection's dispatch loop, so nothing
//! here waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agent_client_protocol::v1::schema::{
    RequestPermissionOutcome, RequestPermissionRequest, RequestPermissionResponse,
    SelectedPermissionOutcome, SessionId, SessionNotification,
};
use agent_client_protocol::v1::Responder;
use serde_json::Value;
use tokio::sync::mpsc;

use super::asks::{Asked, Waiting};
use crate::agent::updates;
use crate::config::PermissionPolicy::{self, Ask};
use crate::wire::{DecidedBy, EventBody, PermissionDecision};

/// The running turns of one agent process, by the agent's session id.
#[derive(Default)]
pub struct Routes {
    turns: Mutex<HashMap<String, Route>>,
    /// The permission requests waiting for a caller's answer.
    pub waiting: Arc<Waiting>,
}

struct Route {
    events: mpsc::UnboundedSender<EventBody>,
    policy: PermissionPolicy,
    /// Where requests left to the caller go, when the turn's caller follows it.
    asks: Option<mpsc::UnboundedSender<Asked>>,
}

/// A turn's place in [`Routes`]; removed when dropped.
pub struct RouteGuard {
    routes: Arc<Routes>,
    session: String,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        self.routes.lock().remove(&self.session);
    }
}

impl Routes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Route>> {
        self.turns.lock().expect("routes lock")
    }

    /// Sends what session `id` says from now on to the returned receiver, until the guard drops;
    /// with policy `ask`, the permission requests to `asks` (rejected without one).
    pub fn open(
        self: &Arc<Self>,
        id: &SessionId,
        policy: PermissionPolicy,
        asks: Option<mpsc::UnboundedSender<Asked>>,
    ) -> (RouteGuard, mpsc::UnboundedReceiver<EventBody>) {
        let (events, rx) = mpsc::unbounded_channel();
        let session = id.to_string();
        let route = Route {
            events,
            policy,
            asks,
        };
        self.lock().insert(session.clone(), route);
        let guard = RouteGuard {
            routes: self.clone(),
            session,
        };
        (guard, rx)
    }

    /// Whether a turn of session `id` is running.
    pub fn running(&self, id: &SessionId) -> bool {
        self.lock().contains_key(&id.to_string())
    }

    /// A `session/update`: its event, if the contract names its kind and a turn listens. (The
    /// replay of a `session/load` comes while no turn listens, and is left out.)
    pub fn update(&self, n: &SessionNotification) {
        let Ok(update) = serde_json::to_value(&n.update) else {
            return;
        };
        if let Some(event) = updates::event_of(&update) {
            if let Some(route) = self.lock().get(&n.session_id.to_string()) {
                let _ = route.events.send(event);
            }
        }
    }

    /// A permission request, answered at once by the turn's policy (rejected when no turn of
    /// the session runs), or left to the turn's caller; the decision is the turn's `permission`
    /// event.
    pub fn permission(
        &self,
        request: RequestPermissionRequest,
        responder: Responder<RequestPermissionResponse>,
    ) {
        let asked = serde_json::to_value(&request).unwrap_or(Value::Null);
        let routes = self.lock();
        let route = routes.get(&request.session_id.to_string());
        let asks = route.and_then(|r| r.asks.as_ref());
        let responder = match asks.filter(|_| route.is_some_and(|r| r.policy == Ask)) {
            Some(asks) => match asks.send(Asked {
                request: asked.clone(),
                responder,
            }) {
                Ok(()) => return,
                // The turn is over: its policy answers.
                Err(mpsc::error::SendError(back)) => back.responder,
            },
            None => responder,
        };
        let policy = route.map_or(PermissionPolicy::DenyAll, |r| r.policy);
        let (outcome, decision) = by_policy(policy, &asked);
        if let Some(route) = route {
            let _ = route.events.send(EventBody::Permission {
                title: updates::string(&asked["toolCall"]["title"]),
                tool_call_id: updates::string(&asked["toolCall"]["toolCallId"]),
                decision,
                by: DecidedBy::Policy,
            });
        }
        drop(routes);
        if let Err(e) = responder.respond(RequestPermissionResponse::new(outcome)) {
            tracing::debug!(error = %e, "answering a permission request failed");
        }
    }
}

/// The answer `policy` gives to a permission request (as ACP's JSON): the option of the right
/// kind it selects, or `cancelled` when the request offers none.
pub(super) fn by_policy(
    policy: PermissionPolicy,
    asked: &Value,
) -> (RequestPermissionOutcome, PermissionDecision) {
    let kind = asked["toolCall"]["kind"].as_str().unwrap_or_default();
    let allow = match policy {
        PermissionPolicy::AllowAll => true,
        PermissionPolicy::AllowReads => matches!(kind, "read" | "search"),
        PermissionPolicy::DenyAll | PermissionPolicy::Ask => false,
    };
    let wanted: [&str; 2] = if allow {
        ["allow_once", "allow_always"]
    } else {
        ["reject_once", "reject_always"]
    };
    let options = asked["options"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let chosen = wanted
        .iter()
        .find_map(|k| options.iter().find(|o| o["kind"] == *k));
    match chosen.and_then(|o| o["optionId"].as_str()) {
        Some(id) => (
            RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new(id.to_string())),
            if allow {
                PermissionDecision::Allowed
            } else {
                PermissionDecision::Rejected
            },
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

    fn asked(kind: &str) -> Value {
        serde_json::json!({
            "sessionId": "s",
            "toolCall": {"toolCallId": "c1", "title": "t", "kind": kind},
            "options": [
                {"optionId": "yes", "name": "Allow", "kind": "allow_once"},
                {"optionId": "no", "name": "Reject", "kind": "reject_once"}
            ]
        })
    }

    fn selected(o: &RequestPermissionOutcome) -> Option<String> {
        match o {
            RequestPermissionOutcome::Selected(s) => Some(s.option_id.to_string()),
            _ => None,
        }
    }

    #[test]
    fn each_policy_selects_the_option_of_its_kind() {
        use PermissionPolicy::*;
        let cases = [
            (AllowAll, "edit", Some("yes"), PermissionDecision::Allowed),
            (AllowReads, "read", Some("yes"), PermissionDecision::Allowed),
            (
                AllowReads,
                "search",
                Some("yes"),
                PermissionDecision::Allowed,
            ),
            (
                AllowReads,
                "execute",
                Some("no"),
                PermissionDecision::Rejected,
            ),
            (DenyAll, "read", Some("no"), PermissionDecision::Rejected),
        ];
        for (policy, kind, option, decision) in cases {
            let (outcome, d) = by_policy(policy, &asked(kind));
            assert_eq!(selected(&outcome).as_deref(), option, "{policy:?} {kind}");
            assert_eq!(d, decision, "{policy:?} {kind}");
        }
        let mut only_allow = asked("execute");
        only_allow["options"].as_array_mut().unwrap().pop();
        let (outcome, d) = by_policy(DenyAll, &only_allow);
        assert!(selected(&outcome).is_none());
        assert_eq!(d, PermissionDecision::Cancelled);
    }
}
