//! The spans of an agent's work, named and described as OpenTelemetry's GenAI conventions
//! say: `invoke_agent {agent}` for a turn or a run, `execute_tool {title}` for each tool call,
//! from its `tool_call` event to its final status. Made only while traces are exported (see
//! [`super::trace`]), and kept out of the logs.
//!
//! Of the GenAI attributes, the settled ones are used: `gen_ai.operation.name`,
//! `gen_ai.agent.name`, `gen_ai.provider.name` (for the agents whose provider is known),
//! `gen_ai.request.model` (runs), `gen_ai.usage.input_tokens` / `output_tokens` (where the
//! agent reports them: runs), `gen_ai.tool.name`, `gen_ai.tool.call.id`, `error.type`. What an
//! ACP agent reports of its usage (the context's tokens and the session's cost) goes under
//! `clawdforge.*`. Prompts and outputs (`gen_ai.input.messages`, `gen_ai.output.messages`)
//! only when the operator opts in.

use std::collections::BTreeMap;

use tracing::field::Empty;
use tracing::Span;

use super::trace::{capture_content, exporting};
use crate::wire::EventBody;

/// The target of these spans, which the log output leaves out.
pub const TARGET: &str = "clawdforge::genai";

/// The tool statuses after which a tool call is over.
const FINAL: [&str; 2] = ["completed", "failed"];

/// An agent's span (a turn's or a run's) and its tool calls' spans still open.
pub struct AgentSpan {
    span: Span,
    tools: BTreeMap<String, Span>,
}

impl AgentSpan {
    /// No span (traces are off, or the agent was never invoked).
    pub fn none() -> AgentSpan {
        AgentSpan {
            span: Span::none(),
            tools: BTreeMap::new(),
        }
    }

    /// A turn's span: `agent` invoked, under the current span.
    pub fn turn(agent: &str) -> AgentSpan {
        if !exporting() {
            return AgentSpan::none();
        }
        let span = tracing::info_span!(
            target: TARGET,
            "invoke_agent",
            otel.name = %format!("invoke_agent {agent}"),
            gen_ai.operation.name = "invoke_agent",
            gen_ai.agent.name = %agent,
            gen_ai.provider.name = Empty,
            gen_ai.request.model = Empty,
            gen_ai.usage.input_tokens = Empty,
            gen_ai.usage.output_tokens = Empty,
            gen_ai.input.messages = Empty,
            gen_ai.output.messages = Empty,
            clawdforge.context.used_tokens = Empty,
            clawdforge.context.size_tokens = Empty,
            clawdforge.cost_usd = Empty,
            clawdforge.stop_reason = Empty,
            error.type = Empty,
            otel.status_code = Empty,
        );
        if let Some(provider) = provider(agent) {
            span.record("gen_ai.provider.name", provider);
        }
        AgentSpan {
            span,
            tools: BTreeMap::new(),
        }
    }

    /// A run's span: claude with `model`.
    pub fn run(model: &str) -> AgentSpan {
        let agent = AgentSpan::turn("claude");
        agent.span.record("gen_ai.request.model", model);
        agent
    }

    /// The span, to run the agent's work in.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// The prompt, recorded only when the operator opted in.
    pub fn prompt(&self, text: &str) {
        if capture_content() {
            self.span
                .record("gen_ai.input.messages", messages("user", text).as_str());
        }
    }

    /// Follows an event of the agent: its tool calls' spans, its usage.
    pub fn saw(&mut self, body: &EventBody) {
        if self.span.is_none() {
            return;
        }
        match body {
            EventBody::ToolCall {
                tool_call_id,
                title,
                kind,
                status,
                ..
            } => {
                let tool = self.tool(tool_call_id, title, kind.as_deref());
                self.tools.insert(tool_call_id.clone(), tool);
                self.tool_status(tool_call_id, status.as_deref());
            }
            EventBody::ToolCallUpdate {
                tool_call_id,
                title,
                status,
            } => {
                if let (Some(tool), Some(title)) = (self.tools.get(tool_call_id), title) {
                    tool.record("otel.name", format!("execute_tool {title}").as_str());
                    tool.record("gen_ai.tool.name", title.as_str());
                }
                self.tool_status(tool_call_id, status.as_deref());
            }
            EventBody::Usage {
                used,
                size,
                cost_usd,
            } => {
                let span = &self.span;
                if let Some(n) = used {
                    span.record("clawdforge.context.used_tokens", n);
                }
                if let Some(n) = size {
                    span.record("clawdforge.context.size_tokens", n);
                }
                if let Some(usd) = cost_usd {
                    span.record("clawdforge.cost_usd", usd);
                }
            }
            _ => {}
        }
    }

    fn tool(&self, id: &str, title: &str, kind: Option<&str>) -> Span {
        tracing::info_span!(
            target: TARGET,
            parent: &self.span,
            "execute_tool",
            otel.name = %format!("execute_tool {title}"),
            gen_ai.operation.name = "execute_tool",
            gen_ai.tool.name = %title,
            gen_ai.tool.call.id = %id,
            clawdforge.tool.kind = kind.unwrap_or("other"),
            clawdforge.tool.status = Empty,
            error.type = Empty,
            otel.status_code = Empty,
        )
    }

    /// A tool call's status: a final one ends its span.
    fn tool_status(&mut self, id: &str, status: Option<&str>) {
        let Some(status) = status else { return };
        let Some(tool) = self.tools.get(id) else {
            return;
        };
        tool.record("clawdforge.tool.status", status);
        if FINAL.contains(&status) {
            if status == "failed" {
                tool.record("error.type", "tool_failed");
                tool.record("otel.status_code", "ERROR");
            }
            self.tools.remove(id);
        }
    }

    /// What the work cost, as the agent reported it.
    pub fn cost(&self, usd: Option<f64>) {
        if let Some(usd) = usd {
            self.span.record("clawdforge.cost_usd", usd);
        }
    }

    /// The tokens a run's agent reported.
    pub fn tokens(&self, input: Option<u64>, output: Option<u64>) {
        if let Some(n) = input {
            self.span.record("gen_ai.usage.input_tokens", n);
        }
        if let Some(n) = output {
            self.span.record("gen_ai.usage.output_tokens", n);
        }
    }

    /// Ends the span (and any tool call still open): `Ok` with the stop reason, or the error's
    /// kind; `output` recorded only when the operator opted in.
    pub fn ended(self, outcome: Result<&str, &str>, output: Option<&str>) {
        match outcome {
            Ok(stop_reason) => {
                self.span.record("clawdforge.stop_reason", stop_reason);
            }
            Err(kind) => {
                self.span.record("error.type", kind);
                self.span.record("otel.status_code", "ERROR");
            }
        }
        if let Some(text) = output.filter(|_| capture_content()) {
            let recorded = messages("assistant", text);
            self.span
                .record("gen_ai.output.messages", recorded.as_str());
        }
    }
}

/// The provider behind the agents whose provider is known.
fn provider(agent: &str) -> Option<&'static str> {
    match agent {
        "claude" => Some("anthropic"),
        "codex" => Some("openai"),
        "gemini" => Some("gcp.gemini"),
        _ => None,
    }
}

/// Text as GenAI's messages JSON: one message of `role` with one text part.
fn messages(role: &str, text: &str) -> String {
    serde_json::json!([{ "role": role, "parts": [{ "type": "text", "content": text }] }])
        .to_string()
}
