//! acpx's NDJSON output of one `prompt`, line by line: the turn's events, its end, and why it
//! failed when it did.

use std::process::ExitStatus;

use serde_json::Value;

use super::failure::{error_message, Failure};
use crate::agent::backend::{StopReason, TurnEnd};
use crate::agent::process::{exit_text, last_line};
use crate::agent::{permission, updates};
use crate::wire::{DecidedBy, EventBody};

/// A permission request the agent sent in the turn.
#[derive(Debug)]
struct PendingPermission {
    id: Value,
    title: Option<String>,
    tool_call_id: Option<String>,
    options: Vec<Value>,
}

/// Reads acpx's NDJSON stream of one `prompt`: the raw ACP messages of both directions.
/// The turn is the `session/prompt` request, the `session/update` notifications after it, and
/// the response with the request's id. Updates before the prompt (a cold session's replayed
/// history) are not part of the turn.
#[derive(Debug, Default)]
pub struct PromptStream {
    prompt_id: Option<Value>,
    output: updates::Output,
    events: Vec<EventBody>,
    /// Permission requests of the agent that acpx has not answered yet.
    permissions: Vec<PendingPermission>,
    cancelled: Option<TurnEnd>,
    errors: Vec<(Option<String>, String)>,
    /// acpx has sent the agent `session/cancel` for the prompt.
    told: bool,
    /// The prompt's response has been read.
    answered: bool,
}

impl PromptStream {
    /// Feeds one line; returns the turn's result once its response has been read.
    pub(super) fn feed(&mut self, line: &[u8]) -> Option<Result<TurnEnd, Failure>> {
        let v: Value = serde_json::from_slice(line).ok()?;
        if v["method"] == "session/prompt" && v.get("id").is_some() {
            self.prompt_id = Some(v["id"].clone());
            self.output = updates::Output::default();
            self.events.clear();
            return None;
        }
        let in_turn = self.prompt_id.is_some();
        // Both sides number their requests, so an answer to the agent's permission request may
        // carry the prompt's id: it is told apart by its `outcome`.
        if in_turn && v["result"].get("outcome").is_some() && self.permission_answer(&v) {
            return None;
        }
        if in_turn && v["method"] == "session/cancel" {
            self.told = true;
            return None;
        }
        if in_turn && v.get("id") == self.prompt_id.as_ref() && v.get("method").is_none() {
            self.answered = true;
            if let Some(result) = v.get("result") {
                return self.result(result);
            }
            if v.get("error").is_some() {
                let message = error_message(&v).unwrap_or_default();
                return Some(Err(Failure::Agent(message)));
            }
        }
        if in_turn && v["method"] == "session/update" {
            self.update(&v["params"]["update"]);
            return None;
        }
        if in_turn && v["method"] == "session/request_permission" && v.get("id").is_some() {
            self.permission_request(&v);
            return None;
        }

        if v.get("error").is_some() && v.get("method").is_none() {
            let code = v["error"]["data"]["acpxCode"].as_str().map(str::to_string);
            let message = error_message(&v).unwrap_or_default();
            self.errors.push((code, message));
        }
        None
    }

    /// Whether there is nothing more to tell the agent: acpx has sent it `session/cancel` for
    /// the prompt, or the prompt has its response.
    pub(super) fn settled(&self) -> bool {
        self.told || self.answered
    }

    /// The events read since the last call.
    pub(super) fn take_events(&mut self) -> Vec<EventBody> {
        std::mem::take(&mut self.events)
    }

    /// The prompt's response: the turn's end, unless it says `cancelled`, which acpx's own
    /// timeout says too: then only the exit code tells which.
    fn result(&mut self, result: &Value) -> Option<Result<TurnEnd, Failure>> {
        let stop_reason = StopReason::parse(result["stopReason"].as_str().unwrap_or("end_turn"));
        let cancelled = stop_reason == StopReason::Cancelled;
        let done = self.end(stop_reason);
        if cancelled {
            self.cancelled = Some(done);
            return None;
        }
        Some(Ok(done))
    }

    fn end(&mut self, stop_reason: StopReason) -> TurnEnd {
        TurnEnd {
            output: std::mem::take(&mut self.output).finish(),
            stop_reason,
        }
    }

    /// A `session/update` of the turn: the agent's text goes into the output, and every kind
    /// the contract names becomes its event. Kinds it does not name are left out.
    fn update(&mut self, update: &Value) {
        if let Some(event) = updates::event_of(update) {
            self.output.add(&event);
            self.events.push(event);
        }
    }

    /// A permission request of the agent, to pair with its answer.
    fn permission_request(&mut self, v: &Value) {
        let params = &v["params"];
        let options = params["options"].as_array().cloned().unwrap_or_default();
        let (title, tool_call_id) = permission::tool_call(params);
        self.permissions.push(PendingPermission {
            id: v["id"].clone(),
            title,
            tool_call_id,
            options,
        });
    }

    /// The answer to a permission request (acpx answers by its policy flag).
    fn permission_answer(&mut self, v: &Value) -> bool {
        let Some(at) = self
            .permissions
            .iter()
            .position(|p| v.get("id") == Some(&p.id))
        else {
            return false;
        };
        let asked = self.permissions.remove(at);
        let outcome = &v["result"]["outcome"];
        let chosen = asked
            .options
            .iter()
            .find(|o| o["optionId"] == outcome["optionId"]);
        let decision =
            permission::decision(outcome["outcome"].as_str(), chosen.map(|o| &o["kind"]));
        self.events.push(EventBody::Permission {
            title: asked.title,
            tool_call_id: asked.tool_call_id,
            decision,
            by: DecidedBy::Policy,
        });
        true
    }

    /// A cancelled turn acpx did not finish in time: what the agent had said.
    pub(super) fn cut_short(&mut self) -> TurnEnd {
        self.cancelled
            .take()
            .unwrap_or_else(|| self.end(StopReason::Cancelled))
    }

    /// How the turn ended, once acpx has exited: a cancelled turn, or why there was no result.
    pub(super) fn finish(&mut self, status: ExitStatus, stderr: &str) -> Result<TurnEnd, Failure> {
        match self.cancelled.take() {
            Some(done) if status.success() && self.errors.is_empty() => Ok(done),
            _ => Err(self.failure(status, stderr)),
        }
    }

    /// Why acpx ended without the turn's response.
    pub(super) fn failure(&self, status: ExitStatus, stderr: &str) -> Failure {
        let has_code = |c: &str| {
            self.errors
                .iter()
                .any(|(code, _)| code.as_deref() == Some(c))
        };
        if status.code() == Some(3) || has_code("TIMEOUT") {
            return Failure::Timeout;
        }
        if status.code() == Some(4) || has_code("NO_SESSION") {
            return Failure::NoSession;
        }
        let message = self
            .errors
            .last()
            .map(|(_, m)| m.clone())
            .or_else(|| Some(last_line(stderr).to_string()).filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "no result from the agent".into());
        let message = format!("acpx exited with {}: {message}", exit_text(status.code()));
        if self.prompt_id.is_some() || !owner_still_starting(&message) {
            Failure::Agent(message)
        } else {
            Failure::OwnerNotUp(message)
        }
    }
}

/// Whether acpx gave up waiting for the session's queue owner while it was still starting: it
/// neither exited nor failed to spawn, and nothing was queued.
fn owner_still_starting(message: &str) -> bool {
    message.contains("Session queue owner failed to start")
        && !message.contains("before binding its socket")
        && !message.contains("spawn error:")
        && !message.contains("startup input failed:")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{PermissionDecision, PlanEntry};
    use std::os::unix::process::ExitStatusExt;

    fn run_fixture(text: &str) -> (PromptStream, Option<Result<TurnEnd, Failure>>) {
        let mut s = PromptStream::default();
        for line in text.lines() {
            if let Some(done) = s.feed(line.as_bytes()) {
                return (s, Some(done));
            }
        }
        (s, None)
    }

    #[test]
    fn collects_only_message_chunks_after_the_prompt() {
        let text = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}
{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":1}}
{"jsonrpc":"2.0","method":"session/update","params":{"update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"replayed history"}}}}
{"jsonrpc":"2.0","id":2,"method":"session/prompt","params":{"prompt":[{"type":"text","text":"hi"}]}}
{"jsonrpc":"2.0","method":"session/update","params":{"update":{"sessionUpdate":"agent_thought_chunk","content":{"type":"text","text":"thinking"}}}}
{"jsonrpc":"2.0","method":"session/update","params":{"update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"echo: "}}}}
{"jsonrpc":"2.0","method":"session/update","params":{"update":{"sessionUpdate":"tool_call","toolCallId":"t1","title":"x"}}}
{"jsonrpc":"2.0","method":"session/update","params":{"update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"hi"}}}}
{"jsonrpc":"2.0","id":2,"result":{"stopReason":"end_turn"}}
"#;
        let (mut s, done) = run_fixture(text);
        assert_eq!(
            done,
            Some(Ok(TurnEnd {
                output: "echo: hi".into(),
                stop_reason: StopReason::EndTurn
            }))
        );
        // The replayed history before the prompt is not an event of the turn.
        let messages: Vec<_> = s
            .take_events()
            .into_iter()
            .filter_map(|e| match e {
                EventBody::Message { text } => Some(text),
                _ => None,
            })
            .collect();
        assert_eq!(messages, ["echo: ", "hi"]);
    }

    fn fixture(name: &str) -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/acpx/");
        std::fs::read_to_string(format!("{path}{name}")).unwrap()
    }

    #[test]
    fn recorded_acpx_runs() {
        let ok = |out: &str| {
            Some(Ok(TurnEnd {
                output: out.into(),
                stop_reason: StopReason::EndTurn,
            }))
        };
        assert_eq!(
            run_fixture(&fixture("prompt-ok.ndjson")).1,
            ok("echo: hello")
        );
        assert_eq!(
            run_fixture(&fixture("prompt-warm.ndjson")).1,
            ok("echo: second turn")
        );
        let exit = |code: i32| ExitStatus::from_raw(code << 8);
        let (mut s, done) = run_fixture(&fixture("prompt-crash.ndjson"));
        assert!(done.is_none());
        match s.finish(exit(1), "") {
            Err(Failure::Agent(m)) => assert!(m.contains("disconnected"), "{m}"),
            other => panic!("{other:?}"),
        }
        let (mut s, done) = run_fixture(&fixture("prompt-timeout.ndjson"));
        assert!(done.is_none());
        assert_eq!(s.finish(exit(3), ""), Err(Failure::Timeout));
        let (_, done) = run_fixture(&fixture("prompt-agent-error.ndjson"));
        assert!(matches!(done, Some(Err(Failure::Agent(_)))), "{done:?}");
        let (mut s, done) = run_fixture(&fixture("prompt-cancelled.ndjson"));
        assert!(done.is_none());
        assert_eq!(
            s.finish(exit(0), "").unwrap().stop_reason,
            StopReason::Cancelled
        );
        let (s, _) = run_fixture(&fixture("prompt-no-session.ndjson"));
        assert_eq!(s.failure(exit(4), ""), Failure::NoSession);
    }

    #[test]
    fn a_queue_owner_still_starting_can_be_sent_again_but_one_that_died_cannot() {
        let exit = ExitStatus::from_raw(1 << 8);
        let line = |m: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":null,"error":{{"code":-32603,"message":"{m}","data":{{"acpxCode":"RUNTIME","origin":"cli"}}}}}}"#
            )
        };
        let slow = line("Session queue owner failed to start for session s");
        let (s, _) = run_fixture(&slow);
        assert!(
            matches!(s.failure(exit, ""), Failure::OwnerNotUp(_)),
            "{:?}",
            s.failure(exit, "")
        );
        let died = line("Session queue owner failed to start for session s: exited with code 1 before binding its socket");
        let (s, _) = run_fixture(&died);
        assert!(matches!(s.failure(exit, ""), Failure::Agent(_)));
        // Once the prompt went in, nothing is sent twice.
        let sent = format!(
            "{}\n{slow}",
            r#"{"jsonrpc":"2.0","id":2,"method":"session/prompt","params":{"sessionId":"s","prompt":[]}}"#
        );
        let (s, _) = run_fixture(&sent);
        assert!(matches!(s.failure(exit, ""), Failure::Agent(_)));
    }

    /// Each kind of update of a turn as ACP (schema 1.17) writes it, with a permission request
    /// whose id is the prompt's own and acpx's answer to it.
    const EVENTS: &str = r#"{"jsonrpc":"2.0","id":2,"method":"session/prompt","params":{"sessionId":"s","prompt":[]}}
{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":{"sessionUpdate":"agent_thought_chunk","content":{"type":"text","text":"hmm"}}}}
{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":{"sessionUpdate":"plan","entries":[{"content":"read it","priority":"high","status":"pending"}]}}}
{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":{"sessionUpdate":"tool_call","toolCallId":"c1","title":"Read a.md","kind":"read","status":"pending","locations":[{"path":"/w/a.md","line":3}]}}}
{"jsonrpc":"2.0","id":2,"method":"session/request_permission","params":{"sessionId":"s","toolCall":{"toolCallId":"c1","title":"Read a.md"},"options":[{"optionId":"yes","name":"Allow","kind":"allow_once"},{"optionId":"no","name":"Reject","kind":"reject_once"}]}}
{"jsonrpc":"2.0","id":2,"result":{"outcome":{"outcome":"selected","optionId":"yes"}}}
{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":{"sessionUpdate":"tool_call_update","toolCallId":"c1","status":"completed"}}}
{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":{"sessionUpdate":"available_commands_update","availableCommands":[]}}}
{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"it says "}}}}
{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"hi"}}}}
{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":{"sessionUpdate":"usage_update","used":1200,"size":200000,"cost":{"amount":0.25,"currency":"USD"}}}}
{"jsonrpc":"2.0","id":2,"result":{"stopReason":"end_turn"}}
"#;

    #[test]
    fn every_update_kind_of_the_contract_becomes_its_event_in_order() {
        let mut s = PromptStream::default();
        let mut events = Vec::new();
        let mut done = None;
        for line in EVENTS.lines() {
            done = s.feed(line.as_bytes());
            events.extend(s.take_events());
        }
        assert_eq!(
            done,
            Some(Ok(TurnEnd {
                output: "it says hi".into(),
                stop_reason: StopReason::EndTurn
            })),
            "the permission answer with the prompt's id did not end the turn"
        );
        let text = |t: &str| t.to_string();
        assert_eq!(
            events,
            vec![
                EventBody::Thought { text: text("hmm") },
                EventBody::Plan {
                    entries: vec![PlanEntry {
                        content: text("read it"),
                        priority: Some(text("high")),
                        status: Some(text("pending")),
                    }]
                },
                EventBody::ToolCall {
                    tool_call_id: text("c1"),
                    title: text("Read a.md"),
                    kind: Some(text("read")),
                    status: Some(text("pending")),
                    locations: vec![text("/w/a.md")],
                },
                EventBody::Permission {
                    title: Some(text("Read a.md")),
                    tool_call_id: Some(text("c1")),
                    decision: PermissionDecision::Allowed,
                    by: DecidedBy::Policy,
                },
                EventBody::ToolCallUpdate {
                    tool_call_id: text("c1"),
                    title: None,
                    status: Some(text("completed")),
                },
                EventBody::Message {
                    text: text("it says ")
                },
                EventBody::Message { text: text("hi") },
                EventBody::Usage {
                    used: Some(1200),
                    size: Some(200000),
                    cost_usd: Some(0.25),
                },
            ]
        );
    }

    #[test]
    fn a_rejected_or_cancelled_permission_says_so() {
        let answer = |outcome: &str| {
            let mut s = PromptStream::default();
            let lines = [
                r#"{"jsonrpc":"2.0","id":1,"method":"session/prompt","params":{}}"#.to_string(),
                r#"{"jsonrpc":"2.0","id":7,"method":"session/request_permission","params":{"toolCall":{"toolCallId":"c"},"options":[{"optionId":"y","kind":"allow_always"},{"optionId":"n","kind":"reject_always"}]}}"#.to_string(),
                format!(r#"{{"jsonrpc":"2.0","id":7,"result":{{"outcome":{outcome}}}}}"#),
            ];
            for l in &lines {
                assert_eq!(s.feed(l.as_bytes()), None);
            }
            match s.take_events().as_slice() {
                [EventBody::Permission { decision, .. }] => *decision,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            answer(r#"{"outcome":"selected","optionId":"y"}"#),
            PermissionDecision::Allowed
        );
        assert_eq!(
            answer(r#"{"outcome":"selected","optionId":"n"}"#),
            PermissionDecision::Rejected
        );
        assert_eq!(
            answer(r#"{"outcome":"cancelled"}"#),
            PermissionDecision::Cancelled
        );
    }

    #[test]
    fn a_cancelled_turn_waits_for_the_exit_code() {
        let text = r#"{"jsonrpc":"2.0","id":3,"method":"session/prompt","params":{}}
{"jsonrpc":"2.0","id":3,"result":{"stopReason":"cancelled"}}
"#;
        let (mut s, done) = run_fixture(text);
        assert!(done.is_none());
        assert_eq!(
            s.finish(ExitStatus::from_raw(3 << 8), ""),
            Err(Failure::Timeout)
        );
        let (mut s, _) = run_fixture(text);
        assert_eq!(
            s.finish(ExitStatus::from_raw(0), "").unwrap().stop_reason,
            StopReason::Cancelled
        );
    }

    #[test]
    fn only_acpx_telling_the_agent_or_the_prompt_ending_settles_a_cancel() {
        let prompt = r#"{"jsonrpc":"2.0","id":3,"method":"session/prompt","params":{}}"#;
        let cancel = r#"{"jsonrpc":"2.0","method":"session/cancel","params":{"sessionId":"s"}}"#;
        let chunk = r#"{"jsonrpc":"2.0","method":"session/update","params":{"update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"hi"}}}}"#;
        let result = r#"{"jsonrpc":"2.0","id":3,"result":{"stopReason":"cancelled"}}"#;
        let mut s = PromptStream::default();
        // A cancel before this prompt was sent (the previous turn's) tells nothing about it.
        for line in [cancel, prompt, chunk] {
            assert_eq!(s.feed(line.as_bytes()), None);
            assert!(!s.settled(), "settled after {line}");
        }
        assert_eq!(s.feed(cancel.as_bytes()), None);
        assert!(s.settled(), "the agent was told");
        assert_eq!(
            s.take_events(),
            vec![EventBody::Message { text: "hi".into() }]
        );

        let mut s = PromptStream::default();
        for line in [prompt, result] {
            assert_eq!(s.feed(line.as_bytes()), None);
        }
        assert!(s.settled(), "the prompt is over");
    }

    #[test]
    fn an_error_response_to_the_prompt_is_an_agent_error() {
        let text = r#"{"jsonrpc":"2.0","id":"p","method":"session/prompt","params":{}}
{"jsonrpc":"2.0","id":"p","error":{"code":-32603,"message":"boom"}}
"#;
        let (_, done) = run_fixture(text);
        assert_eq!(done, Some(Err(Failure::Agent("boom".into()))));
    }

    #[test]
    fn exit_codes_and_error_lines_map_to_failures() {
        let text = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"agent went away","data":{"acpxCode":"AGENT_DISCONNECTED"}}}"#;
        let (s, done) = run_fixture(text);
        assert!(done.is_none());
        match s.failure(ExitStatus::from_raw(1 << 8), "") {
            Failure::Agent(m) => assert!(m.contains("AGENT_DISCONNECTED"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            PromptStream::default().failure(ExitStatus::from_raw(3 << 8), ""),
            Failure::Timeout
        );
        assert_eq!(
            PromptStream::default().failure(ExitStatus::from_raw(4 << 8), ""),
            Failure::NoSession
        );
        match PromptStream::default().failure(ExitStatus::from_raw(2 << 8), "usage: bad flag\n") {
            Failure::Agent(m) => assert!(m.contains("usage: bad flag"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
