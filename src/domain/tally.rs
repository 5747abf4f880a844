//! A turn's figures as it runs, for the metrics: its events by type, the time to its first
//! event, its tool calls and the status each ended with; counted when the turn ends. With its
//! span (`invoke_agent`, and one per tool call) while traces are exported.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::telemetry;
use crate::telemetry::genai::AgentSpan;
use crate::wire::EventBody;

/// The figures of one turn.
pub(super) struct TurnTally {
    agent: String,
    backend: &'static str,
    began: Instant,
    first_seen: bool,
    /// Each tool call's kind and latest status, by its id.
    tools: BTreeMap<String, (String, String)>,
    span: AgentSpan,
}

impl TurnTally {
    /// The figures of a turn that never reached its agent.
    pub(super) fn new(agent: &str, backend: &'static str) -> TurnTally {
        TurnTally {
            agent: agent.to_string(),
            backend,
            began: Instant::now(),
            first_seen: false,
            tools: BTreeMap::new(),
            span: AgentSpan::none(),
        }
    }

    /// The figures of a turn whose agent is invoked now, under the current span, with `prompt`.
    pub(super) fn invoked(agent: &str, backend: &'static str, prompt: &str) -> TurnTally {
        let span = AgentSpan::turn(agent);
        span.prompt(prompt);
        TurnTally {
            span,
            ..TurnTally::new(agent, backend)
        }
    }

    /// The span the agent's work runs in.
    pub(super) fn span(&self) -> tracing::Span {
        self.span.span().clone()
    }

    /// Counts an event of the turn.
    pub(super) fn saw(&mut self, body: &EventBody) {
        self.span.saw(body);
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

    /// Counts the turn, ended with `outcome` (its stop reason, or its error's kind when
    /// `failed`) after `seconds`, and its tool calls with the status each ended with; ends its
    /// span, with the turn's `output`.
    pub(super) fn ended(self, outcome: &'static str, failed: bool, seconds: f64, output: &str) {
        telemetry::turn(&self.agent, self.backend, outcome, seconds);
        let ended = if failed { Err(outcome) } else { Ok(outcome) };
        self.span
            .ended(ended, Some(output).filter(|o| !o.is_empty()));
        for (kind, status) in self.tools.values() {
            telemetry::tool_call(&self.agent, kind, status);
        }
    }

    pub(super) fn agent(&self) -> &str {
        &self.agent
    }
}
