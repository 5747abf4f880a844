//! ACP's `session/update`s as the contract's events, for every backend:
//! one mapping, so acpx's NDJSON and a native connection give the same events.

use serde_json::Value;

use crate::wire::{EventBody, PlanEntry};

/// Longest turn output we collect; more is cut, with a note. A reply must fit in one NATS
/// message (1 MiB by default).
pub const MAX_OUTPUT: usize = 768 * 1024;

/// The contract's event for one `session/update` (its `update` object, as ACP writes it);
/// `None` for the kinds the contract does not name.
pub fn event_of(update: &Value) -> Option<EventBody> {
    let text = || update["content"]["text"].as_str().map(str::to_string);
    match update["sessionUpdate"].as_str().unwrap_or_default() {
        "agent_message_chunk" => text().map(|text| EventBody::Message { text }),
        "agent_thought_chunk" => text().map(|text| EventBody::Thought { text }),
        "tool_call" => Some(tool_call(update)),
        "tool_call_update" => Some(EventBody::ToolCallUpdate {
            tool_call_id: string(&update["toolCallId"]).unwrap_or_default(),
            title: string(&update["title"]),
            status: string(&update["status"]),
        }),
        "plan" => Some(plan(update)),
        "usage_update" => Some(EventBody::Usage {
            used: update["used"].as_u64(),
            size: update["size"].as_u64(),
            cost_usd: usd(&update["cost"]),
        }),
        _ => None,
    }
}

/// A turn's output: its `message` texts joined, cut at [`MAX_OUTPUT`] with a note.
#[derive(Debug, Default)]
pub struct Output {
    text: String,
    truncated: bool,
}

impl Output {
    pub fn add(&mut self, event: &EventBody) {
        if let EventBody::Message { text } = event {
            if self.text.len() + text.len() <= MAX_OUTPUT {
                self.text.push_str(text);
            } else {
                self.truncated = true;
            }
        }
    }

    pub fn finish(mut self) -> String {
        if self.truncated {
            self.text.push_str("\n[output truncated]");
        }
        self.text
    }
}

pub fn string(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// An ACP `cost` (`{amount, currency}`) in US dollars, when it is in dollars.
fn usd(cost: &Value) -> Option<f64> {
    match cost["currency"].as_str() {
        Some(c) if c.eq_ignore_ascii_case("USD") => cost["amount"].as_f64(),
        _ => None,
    }
}

fn tool_call(update: &Value) -> EventBody {
    let locations = update["locations"]
        .as_array()
        .map(|ls| ls.iter().filter_map(|l| string(&l["path"])).collect())
        .unwrap_or_default();
    EventBody::ToolCall {
        tool_call_id: string(&update["toolCallId"]).unwrap_or_default(),
        title: string(&update["title"]).unwrap_or_default(),
        kind: string(&update["kind"]),
        status: string(&update["status"]),
        locations,
    }
}

fn plan(update: &Value) -> EventBody {
    let entries = update["entries"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    EventBody::Plan {
        entries: entries
            .iter()
            .map(|e| PlanEntry {
                content: string(&e["content"]).unwrap_or_default(),
                priority: string(&e["priority"]),
                status: string(&e["status"]),
            })
            .collect(),
    }
}
