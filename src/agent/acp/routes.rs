//! Where an agent process's updates and permission requests go: to the running turn of their
//! session, as the contract's events. Called from the connection's dispatch loop, so nothing
//! here waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agent_client_protocol::v1::schema::{
    RequestPermissionRequest, RequestPermissionResponse, SessionId, SessionNotification,
};
use agent_client_protocol::v1::Responder;
use serde_json::Value;
use tokio::sync::mpsc;

use super::asks::{by_policy, Asked, Waiting};
use crate::agent::def::PermissionPolicy::{self, Ask};
use crate::agent::{permission, updates};
use crate::wire::{DecidedBy, EventBody};

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
            let event = permission::event(&asked, decision, DecidedBy::Policy);
            let _ = route.events.send(event);
        }
        drop(routes);
        if let Err(e) = responder.respond(RequestPermissionResponse::new(outcome)) {
            tracing::debug!(error = %e, "answering a permission request failed");
        }
    }
}
