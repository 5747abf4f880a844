//! A turn's figures as it runs, for the metrics: its events by type, the time to its first
//! event, its tool calls and the status each ended with; counted when the turn ends.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::telemetry;
use crate::wire::EventBody;

/// The figures of one turn.
pub(super) struct TurnTally {
    agent: String,
    backend: &'static str,
    began: Instant,
    first_seen: bool,
    /// Each tool call's kind and latest status, by its id.
    tools: BTreeMap<String, (String, String)>,
}

impl TurnTally {
    pub(super) fn new(agent: &str, backend: &'static str) -> TurnTally {
        TurnTally {
            agent: agent.to_string(),
            backend,
            began: Instant::now(),
            first_seen: false,
            tools: BTreeMap::new(),
        }
    }

    /// Counts an event of the turn.
    pub(super) fn saw(&mut self, body: &EventBody) {
        telemetry::event(body.kind());
        if !self.first_seen {
            self.first_seen = true;
            let seconds = self.began.elapsed().as_secs_f64();
            telemetry::first_event(&self.agent, self.backend, seconds);
        }
        match body {
            EventBody::ToolCall {
                tool_call_id,
                kind,
                status,
                ..
            } => {
                let kind = kind.clone().unwrap_or_else(|| "other".into());
                let status = status.clone().unwrap_or_else(|| "pending".into());
                self.tools.insert(tool_call_id.clone(), (kind, status));
            }
            EventBody::ToolCallUpdate {
                tool_call_id,
                status: Some(status),
                ..
            } => {
                if let Some(call) = self.tools.get_mut(tool_call_id) {
                    call.1 = status.clone();
                }
            }
            _ => {}
        }
    }

    /// Counts the turn, ended with `outcome` (its stop reason or error kind) after `seconds`,
    /// and its tool calls with the status each ended with.
    pub(super) fn ended(self, outcome: &'static str, seconds: f64) {
        telemetry::turn(&self.agent, self.backend, outcome, seconds);
        for (kind, status) in self.tools.values() {
            telemetry::tool_call(&self.agent, kind, status);
        }
    }

    pub(super) fn agent(&self) -> &str {
        &self.agent
    }
}
