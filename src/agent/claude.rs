//! One-shot runs through `claude -p … --output-format json`.
//!
//! The prompt goes in on stdin, which `claude -p` reads when no prompt is given: never on the
//! command line, which every process can read in `/proc/<pid>/cmdline` (other apps' agents
//! included), and which Linux caps at 128 KiB a string. A prompt that starts with '-' is never
//! read as an option either.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::backend::EventSink;
use super::confine::search_path;
use super::confine::{Confinement, Work};
use super::fault::{useful_line, AgentFault, AgentLabel, Ending, Fault};
use super::process::{Collected, Ended, Spawned, Spec};
use crate::error::clip;
use crate::wire::EventBody;

/// Longest stdout we accept: the one result object.
const MAX_STDOUT: usize = 16 * 1024 * 1024;
/// How much of stderr is kept for error messages and the ledger.
const STDERR_TAIL: usize = 4096;
/// Longest error message taken from the agent's own output.
const MAX_MESSAGE: usize = 500;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClaudeError {
    /// The program could not be started (not found, not executable).
    #[error("{0}")]
    Spawn(Box<AgentFault>),
    #[error("the run did not finish within its timeout")]
    Timeout { stderr: String },
    #[error("claude {ending}: {message}")]
    Failed {
        ending: Ending,
        message: String,
        stderr: String,
        cost_usd: Option<f64>,
    },
    #[error("unexpected claude output: {reason}")]
    BadOutput {
        exit_code: Option<i32>,
        reason: String,
        stderr: String,
    },
}

impl ClaudeError {
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            ClaudeError::Failed {
                ending: Ending::Code(code),
                ..
            } => Some(*code),
            ClaudeError::BadOutput { exit_code, .. } => *exit_code,
            ClaudeError::Failed { .. } | ClaudeError::Spawn(_) | ClaudeError::Timeout { .. } => {
                None
            }
        }
    }

    /// The tail of the process's stderr, when it ran.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            ClaudeError::Timeout { stderr }
            | ClaudeError::Failed { stderr, .. }
            | ClaudeError::BadOutput { stderr, .. } => Some(stderr),
            ClaudeError::Spawn(_) => None,
        }
    }

    pub fn cost_usd(&self) -> Option<f64> {
        match self {
            ClaudeError::Failed { cost_usd, .. } => *cost_usd,
            _ => None,
        }
    }
}

/// The result object `claude -p --output-format json` prints, as far as a run needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaudeResult {
    pub subtype: Option<String>,
    pub is_error: bool,
    pub result: Option<String>,
    pub errors: Vec<String>,
    pub cost_usd: Option<f64>,
    /// The tokens the run's model calls took in and gave out (`usage`), as claude reports them.
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

impl ClaudeResult {
    /// Reads the result object out of claude's stdout: the one JSON object, or the last
    /// `result` element of an array (what `--verbose` prints), or the last line that is one.
    pub fn parse(stdout: &[u8]) -> Result<ClaudeResult, String> {
        let text = std::str::from_utf8(stdout).map_err(|_| "output is not UTF-8".to_string())?;
        let text = text.trim();
        if text.is_empty() {
            return Err("no output".into());
        }
        let found = match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(items)) => items.into_iter().rev().find(is_result),
            Ok(v) => Some(v),
            Err(_) => text
                .lines()
                .rev()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(is_result),
        };
        let Some(v) = found else {
            return Err(format!("not a JSON result object: {}", clip(text, 200)));
        };
        Self::from_value(&v)
    }

    fn from_value(v: &Value) -> Result<ClaudeResult, String> {
        if !v.is_object() {
            return Err(format!(
                "expected a JSON object, got {}",
                clip(&v.to_string(), 200)
            ));
        }
        if v["type"] != "result" {
            return Err(format!(
                "expected an object of type \"result\", got type {}",
                clip(&v["type"].to_string(), 80)
            ));
        }
        let is_error = v["is_error"]
            .as_bool()
            .ok_or("the result object has no boolean is_error")?;
        let text_field = |name: &str| match &v[name] {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            other => Err(format!(
                "{name} is not a string: {}",
                clip(&other.to_string(), 80)
            )),
        };
        let errors = match &v["errors"] {
            Value::Array(items) => items
                .iter()
                .map(|e| match e {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(ClaudeResult {
            subtype: text_field("subtype")?,
            is_error,
            result: text_field("result")?,
            errors,
            cost_usd: v["total_cost_usd"].as_f64(),
            input_tokens: v["usage"]["input_tokens"].as_u64(),
            output_tokens: v["usage"]["output_tokens"].as_u64(),
        })
    }

    /// Whether the result says the run failed: `is_error` (which can be true with subtype
    /// "success"), or an `error_*` subtype.
    pub fn failed(&self) -> bool {
        self.is_error
            || self
                .subtype
                .as_deref()
                .is_some_and(|s| s.starts_with("error"))
    }

    /// A short message saying why the run failed, from the result's own words.
    pub fn error_message(&self) -> String {
        let subtype = self.subtype.as_deref().unwrap_or("unknown");
        let detail = if !self.errors.is_empty() {
            self.errors.join("; ")
        } else {
            self.result
                .clone()
                .filter(|r| !r.trim().is_empty())
                .unwrap_or_else(|| "no details".into())
        };
        clip(
            &format!("the agent reported an error ({subtype}): {detail}"),
            MAX_MESSAGE,
        )
    }
}

fn is_result(v: &Value) -> bool {
    v["type"] == "result"
}

/// Options for unattended runs, from the configuration only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaudeOptions {
    pub permission_mode: Option<String>,
    pub allowed_tools: Option<String>,
    pub max_turns: Option<u32>,
}

/// A finished run: the process exited 0 and printed a result object.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutput {
    pub result: ClaudeResult,
    /// The tail of stderr.
    pub stderr: String,
}

#[derive(Debug, Clone)]
pub struct Claude {
    bin: String,
    options: ClaudeOptions,
    confinement: Arc<Confinement>,
}

impl Claude {
    pub fn new(bin: impl Into<String>, options: ClaudeOptions) -> Claude {
        Claude {
            bin: bin.into(),
            options,
            confinement: Arc::new(Confinement::none()),
        }
    }

    /// Runs every run in its app's home, under `confinement`.
    pub fn confined(self, confinement: Arc<Confinement>) -> Claude {
        Claude {
            confinement,
            ..self
        }
    }

    pub fn bin(&self) -> &str {
        &self.bin
    }

    /// The arguments of one run (the prompt goes on stdin).
    pub fn args(&self, model: &str) -> Vec<String> {
        self.args_as(model, false)
    }

    /// The arguments of a run whose events are streamed: `--output-format stream-json`, which
    /// `claude -p` takes only with `--verbose`.
    pub fn stream_args(&self, model: &str) -> Vec<String> {
        self.args_as(model, true)
    }

    fn args_as(&self, model: &str, streamed: bool) -> Vec<String> {
        let mut args: Vec<String> = vec!["-p".into(), "--output-format".into()];
        if streamed {
            args.extend(["stream-json".into(), "--verbose".into()]);
        } else {
            args.push("json".into());
        }
        args.extend(["--model".into(), model.into()]);
        let o = &self.options;
        if let Some(mode) = non_blank(&o.permission_mode) {
            args.extend(["--permission-mode".into(), mode.into()]);
        }
        if let Some(tools) = non_blank(&o.allowed_tools) {
            args.extend(["--allowedTools".into(), tools.into()]);
        }
        if let Some(turns) = o.max_turns {
            args.extend(["--max-turns".into(), turns.to_string()]);
        }
        args
    }

    /// Runs `claude -p` for `app` in `cwd`. Past `timeout` the process and everything it
    /// started (its process group) is killed.
    pub async fn run(
        &self,
        app: &str,
        cwd: &Path,
        model: &str,
        prompt: &str,
        timeout: Duration,
    ) -> Result<RunOutput, ClaudeError> {
        self.run_with(app, cwd, model, prompt, timeout, None).await
    }

    /// A run whose events (`--output-format stream-json`) go to `events` as claude prints
    /// them; it ends as [`run`](Self::run) does.
    pub async fn run_streamed(
        &self,
        app: &str,
        cwd: &Path,
        model: &str,
        prompt: &str,
        timeout: Duration,
        events: &EventSink,
    ) -> Result<RunOutput, ClaudeError> {
        self.run_with(app, cwd, model, prompt, timeout, Some(events))
            .await
    }

    async fn run_with(
        &self,
        app: &str,
        cwd: &Path,
        model: &str,
        prompt: &str,
        timeout: Duration,
        events: Option<&EventSink>,
    ) -> Result<RunOutput, ClaudeError> {
        let args = match events {
            Some(_) => self.stream_args(model),
            None => self.args(model),
        };
        let label = AgentLabel::new("claude", std::slice::from_ref(&self.bin));
        let jail = self.confinement.jail(app, cwd, Work::Run).map_err(|e| {
            let fault = Fault::NotStarted {
                program: self.bin.clone(),
                reason: format!("preparing the app's home: {e}"),
            };
            ClaudeError::Spawn(Box::new(AgentFault::new(label.clone(), fault)))
        })?;
        let spawn_error = |e: std::io::Error| {
            let path = search_path(jail.as_ref());
            let fault = AgentFault::not_started(label.clone(), &e, &path.to_string_lossy());
            ClaudeError::Spawn(Box::new(fault))
        };
        let spawned = Spawned::start(Spec {
            program: &self.bin,
            args: &args,
            cwd: Some(cwd),
            stdin: Some(prompt.as_bytes().to_vec()),
            jail: jail.as_ref(),
            keep_stdin: false,
        })
        .await
        .map_err(spawn_error)?;
        // The run ends when claude exits; anything it left in the background is killed with
        // its process group, as it is at the timeout and when the caller drops the run.
        let ended = match events {
            None => spawned.collect(MAX_STDOUT, STDERR_TAIL, timeout).await,
            Some(sink) => {
                let (tap, lines) = tokio::sync::mpsc::channel(64);
                let run = spawned.collect_tapped(MAX_STDOUT, STDERR_TAIL, timeout, Some(tap));
                tokio::join!(run, relay_events(lines, sink)).0
            }
        };
        outcome(ended)
    }
}

/// How a run ended, from what the process did and printed.
fn outcome(ended: std::io::Result<Ended>) -> Result<RunOutput, ClaudeError> {
    let Collected {
        status,
        stdout,
        stderr,
    } = match ended {
        Ok(Ended::Exited(c)) => c,
        Ok(Ended::TimedOut { stderr }) => return Err(ClaudeError::Timeout { stderr }),
        Err(e) => {
            return Err(ClaudeError::BadOutput {
                exit_code: None,
                reason: format!("waiting for claude: {e}"),
                stderr: String::new(),
            })
        }
    };
    let exit_code = status.code();
    let ending = Ending::of(status);
    let parsed = match &stdout {
        Some(out) => ClaudeResult::parse(out),
        None => Err(format!("output over {MAX_STDOUT} bytes")),
    };
    if !status.success() {
        let message = match &parsed {
            Ok(r) if r.failed() => r.error_message(),
            _ => {
                // No result: it crashed, and the operator gets its whole stderr, once.
                tracing::warn!(stderr = %stderr, "claude {ending} without a result");
                useful_line(&stderr).unwrap_or_else(|| "no error message".into())
            }
        };
        return Err(ClaudeError::Failed {
            ending,
            message,
            stderr,
            cost_usd: parsed.ok().and_then(|r| r.cost_usd),
        });
    }
    match parsed {
        Ok(result) => Ok(RunOutput { result, stderr }),
        Err(reason) => Err(ClaudeError::BadOutput {
            exit_code,
            reason,
            stderr,
        }),
    }
}

/// Turns each stream-json line into the contract's events, into `sink`, as it comes.
async fn relay_events(mut lines: tokio::sync::mpsc::Receiver<Vec<u8>>, sink: &EventSink) {
    while let Some(line) = lines.recv().await {
        for event in stream_events(&line) {
            sink.emit(event).await;
        }
    }
}

/// The events of one line of `claude -p --output-format stream-json --verbose`: the
/// assistant's text, thinking and tool calls, the tools' results, and the result's cost.
pub fn stream_events(line: &[u8]) -> Vec<EventBody> {
    let Ok(v) = serde_json::from_slice::<Value>(line) else {
        return Vec::new();
    };
    let content = v["message"]["content"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    match v["type"].as_str() {
        Some("assistant") => content.iter().filter_map(assistant_part).collect(),
        Some("user") => content.iter().filter_map(tool_result).collect(),
        Some("result") => vec![EventBody::Usage {
            used: None,
            size: None,
            cost_usd: v["total_cost_usd"].as_f64(),
        }],
        _ => Vec::new(),
    }
}

fn text_of(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn assistant_part(part: &Value) -> Option<EventBody> {
    match part["type"].as_str()? {
        "text" => Some(EventBody::Message {
            text: text_of(&part["text"])?,
        }),
        "thinking" => Some(EventBody::Thought {
            text: text_of(&part["thinking"])?,
        }),
        "tool_use" => Some(EventBody::ToolCall {
            tool_call_id: text_of(&part["id"]).unwrap_or_default(),
            title: text_of(&part["name"]).unwrap_or_default(),
            kind: None,
            status: Some("in_progress".into()),
            locations: ["file_path", "path", "notebook_path"]
                .iter()
                .filter_map(|k| text_of(&part["input"][k]))
                .collect(),
        }),
        _ => None,
    }
}

fn tool_result(part: &Value) -> Option<EventBody> {
    if part["type"] != "tool_result" {
        return None;
    }
    let failed = part["is_error"].as_bool().unwrap_or(false);
    Some(EventBody::ToolCallUpdate {
        tool_call_id: text_of(&part["tool_use_id"]).unwrap_or_default(),
        title: None,
        status: Some(if failed { "failed" } else { "completed" }.into()),
    })
}

fn non_blank(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests;
