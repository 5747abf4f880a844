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

use super::confine::search_path;
use super::confine::{Confinement, Work};
use super::fault::{useful_line, AgentFault, AgentLabel, Ending, Fault};
use super::process::{Collected, Ended, Spawned, Spec};
use super::EventSink;
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
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClaudeResult, String> {
        ClaudeResult::parse(text.as_bytes())
    }

    #[test]
    fn a_successful_result() {
        let r = parse(
            r#"{"type":"result","subtype":"success","is_error":false,"duration_ms":2150,
                "num_turns":1,"result":"4","session_id":"s","total_cost_usd":0.0421,
                "usage":{"input_tokens":3},"permission_denials":[]}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            ClaudeResult {
                subtype: Some("success".into()),
                is_error: false,
                result: Some("4".into()),
                errors: vec![],
                cost_usd: Some(0.0421),
            }
        );
        assert!(!r.failed());
    }

    #[test]
    fn is_error_with_subtype_success_is_a_failure() {
        let r = parse(
            r#"{"type":"result","subtype":"success","is_error":true,
                "result":"API Error: 529 overloaded","total_cost_usd":0}"#,
        )
        .unwrap();
        assert!(r.failed());
        assert_eq!(
            r.error_message(),
            "the agent reported an error (success): API Error: 529 overloaded"
        );
    }

    #[test]
    fn error_subtypes_are_failures_and_name_their_errors() {
        let r = parse(
            r#"{"type":"result","subtype":"error_during_execution","is_error":true,
                "errors":["tool failed","then another"],"total_cost_usd":0.5}"#,
        )
        .unwrap();
        assert!(r.failed());
        assert_eq!(r.result, None);
        assert_eq!(r.cost_usd, Some(0.5));
        assert_eq!(
            r.error_message(),
            "the agent reported an error (error_during_execution): tool failed; then another"
        );
        let r = parse(r#"{"type":"result","subtype":"error_max_turns","is_error":false}"#).unwrap();
        assert!(r.failed());
        assert!(r.error_message().contains("error_max_turns"));
        assert!(r.error_message().contains("no details"));
    }

    #[test]
    fn verbose_arrays_and_extra_lines_yield_the_last_result() {
        let array = r#"[{"type":"system","subtype":"init"},
            {"type":"assistant","message":{}},
            {"type":"result","subtype":"success","is_error":false,"result":"done"}]"#;
        assert_eq!(parse(array).unwrap().result.as_deref(), Some("done"));
        let lines = "warning: something\n{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"result\":\"ok\"}\n";
        assert_eq!(parse(lines).unwrap().result.as_deref(), Some("ok"));
    }

    #[test]
    fn anything_else_is_bad_output() {
        for bad in [
            "",
            "   \n",
            "not json",
            "[1,2]",
            "42",
            r#"{"type":"assistant"}"#,
            r#"{"type":"result","subtype":"success"}"#,
            r#"{"type":"result","is_error":"no"}"#,
            r#"{"type":"result","is_error":false,"result":5}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(ClaudeResult::parse(b"\xff\xfe").is_err());
    }

    #[test]
    fn the_command_line_holds_the_options_and_never_the_prompt() {
        let claude = Claude::new(
            "claude",
            ClaudeOptions {
                permission_mode: Some("acceptEdits".into()),
                allowed_tools: Some("Read,Edit".into()),
                max_turns: Some(3),
            },
        );
        let args = claude.args("opus");
        assert_eq!(
            args,
            [
                "-p",
                "--output-format",
                "json",
                "--model",
                "opus",
                "--permission-mode",
                "acceptEdits",
                "--allowedTools",
                "Read,Edit",
                "--max-turns",
                "3",
            ]
        );
        let plain = Claude::new("claude", ClaudeOptions::default());
        let args = plain.args("sonnet");
        assert_eq!(args, ["-p", "--output-format", "json", "--model", "sonnet"]);
        let blank = Claude::new(
            "claude",
            ClaudeOptions {
                permission_mode: Some(" ".into()),
                ..Default::default()
            },
        );
        assert!(!blank
            .args("sonnet")
            .contains(&"--permission-mode".to_string()));
    }

    /// A `claude` made of a shell script, in a fresh directory that is also the run's cwd.
    fn script(body: &str) -> (tempfile::TempDir, Claude) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("claude");
        std::fs::write(&bin, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let claude = Claude::new(bin.to_string_lossy(), ClaudeOptions::default());
        (dir, claude)
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn the_prompt_arrives_whole_on_stdin_whatever_its_size() {
        // Answers with where it ran, how the prompt came and how long it was.
        let (dir, claude) = script(
            r#"if [ "$6" = "--" ]; then p="$7"; via=argv; else p="$(cat)"; via=stdin; fi
printf '{"type":"result","subtype":"success","is_error":false,"result":"%s %s %s","total_cost_usd":0.25}' "$(pwd)" "$via" "${#p}""#,
        );
        let cwd = std::fs::canonicalize(dir.path()).unwrap();
        for (len, via) in [(10, "stdin"), (200_000, "stdin"), (300_000, "stdin")] {
            let out = claude
                .run("t", &cwd, "sonnet", &"y".repeat(len), 10 * SECOND)
                .await
                .unwrap();
            assert_eq!(
                out.result.result.unwrap(),
                format!("{} {via} {len}", cwd.display())
            );
            assert_eq!(out.result.cost_usd, Some(0.25));
        }
    }

    #[tokio::test]
    async fn a_failing_exit_names_the_code_and_keeps_stderr() {
        let (dir, claude) = script("echo starting >&2; echo 'it broke' >&2; exit 3");
        let err = claude
            .run("t", dir.path(), "sonnet", "hi", 10 * SECOND)
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), Some(3));
        assert_eq!(err.stderr(), Some("starting\nit broke"));
        assert_eq!(err.to_string(), "claude exited with code 3: it broke");

        let (dir, claude) = script(
            r#"echo '{"type":"result","subtype":"error_max_turns","is_error":true,"total_cost_usd":1.5}'; exit 1"#,
        );
        let err = claude
            .run("t", dir.path(), "sonnet", "hi", 10 * SECOND)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("error_max_turns"), "{err}");
        assert_eq!(err.cost_usd(), Some(1.5));

        let (dir, claude) = script("echo not json");
        let err = claude
            .run("t", dir.path(), "sonnet", "hi", 10 * SECOND)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClaudeError::BadOutput {
                    exit_code: Some(0),
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_missing_binary_cannot_be_started() {
        let claude = Claude::new("/nonexistent/claude", ClaudeOptions::default());
        let err = claude
            .run("t", Path::new("/"), "sonnet", "hi", SECOND)
            .await
            .unwrap_err();
        assert!(matches!(err, ClaudeError::Spawn(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "agent `claude` could not be started: `/nonexistent/claude` does not exist"
        );
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group() {
        let (dir, claude) = script("echo waiting >&2; sleep 300 & echo $! > child.pid; wait");
        let started = std::time::Instant::now();
        let err = claude
            .run("t", dir.path(), "sonnet", "hi", Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(started.elapsed() < 10 * SECOND);
        assert_eq!(
            err,
            ClaudeError::Timeout {
                stderr: "waiting".into()
            }
        );
        let pid = std::fs::read_to_string(dir.path().join("child.pid")).unwrap();
        assert!(
            gone(pid.trim().parse().unwrap()).await,
            "the background child survived"
        );
    }

    /// Whether `pid` has ended (it may linger as a zombie until its new parent reaps it).
    async fn gone(pid: u32) -> bool {
        for _ in 0..100 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
            if stat.map(|s| s.contains(") Z")).unwrap_or(true) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[test]
    fn stream_json_lines_become_the_contracts_events() {
        let events = |line: &str| stream_events(line.as_bytes());
        assert_eq!(
            events(
                r#"{"type":"assistant","message":{"content":[{"type":"thinking","thinking":"hm"},{"type":"text","text":"hi"},{"type":"tool_use","id":"t1","name":"Edit","input":{"file_path":"/w/a.rs"}}]}}"#
            ),
            vec![
                EventBody::Thought { text: "hm".into() },
                EventBody::Message { text: "hi".into() },
                EventBody::ToolCall {
                    tool_call_id: "t1".into(),
                    title: "Edit".into(),
                    kind: None,
                    status: Some("in_progress".into()),
                    locations: vec!["/w/a.rs".into()],
                },
            ]
        );
        assert_eq!(
            events(
                r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","is_error":true,"content":"no"}]}}"#
            ),
            vec![EventBody::ToolCallUpdate {
                tool_call_id: "t1".into(),
                title: None,
                status: Some("failed".into()),
            }]
        );
        assert!(events(r#"{"type":"system","subtype":"init"}"#).is_empty());
        assert!(events("not json").is_empty());
    }
}
