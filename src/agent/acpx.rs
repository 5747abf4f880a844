//! Sessions through the acpx CLI (pinned: 0.19.1).
//!
//! Every call names the session by our UUID and runs in the session's own directory, so the
//! acpx scope key (agent command, cwd, name) is unique. acpx's queue owner keeps the agent warm
//! between turns and serialises turns of one session, across worker processes too.

use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use super::process::{self, exit_text, last_line, read_tail};
use crate::config::AgentCommand;

/// Longest stdout line we accept from acpx (one JSON-RPC message).
const MAX_LINE: usize = 16 * 1024 * 1024;
/// Longest turn output we collect; more is cut, with a note. A reply must fit in one NATS
/// message (1 MiB by default).
const MAX_OUTPUT: usize = 768 * 1024;
/// Time allowed for the quick acpx commands (new, close, cancel, version).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);
/// Slack on top of a turn's timeout before we stop waiting for acpx to report it.
const TIMEOUT_SLACK: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcpxError {
    #[error("cannot start {bin}: {reason}")]
    Spawn { bin: String, reason: String },
    #[error("the turn did not finish within its timeout")]
    Timeout,
    #[error("acpx has no record of the session")]
    NoSession,
    #[error("the agent failed: {0}")]
    Agent(String),
    #[error("unexpected acpx output: {0}")]
    BadOutput(String),
}

/// What a finished turn produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnOutput {
    pub output: String,
    pub stop_reason: String,
}

#[derive(Debug, Clone)]
pub struct Acpx {
    bin: String,
    ttl_secs: u64,
}

impl Acpx {
    pub fn new(bin: impl Into<String>, ttl_secs: u64) -> Acpx {
        Acpx {
            bin: bin.into(),
            ttl_secs,
        }
    }

    pub fn bin(&self) -> &str {
        &self.bin
    }

    fn args(&self, agent: &AgentCommand, cwd: &Path, timeout: Option<u64>) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--format".into(),
            "json".into(),
            "--json-strict".into(),
            "--approve-all".into(),
            "--cwd".into(),
            cwd.to_string_lossy().into_owned(),
            "--ttl".into(),
            self.ttl_secs.to_string(),
        ];
        if let Some(t) = timeout {
            args.extend(["--timeout".into(), t.to_string()]);
        }
        match agent {
            AgentCommand::Builtin(name) => args.push(name.clone()),
            AgentCommand::Custom(cmd) => args.extend(["--agent".into(), cmd.clone()]),
        }
        args
    }

    /// `acpx --version`.
    pub async fn version(&self) -> Result<String, AcpxError> {
        let out = self.run(vec!["--version".into()]).await?;
        if !out.status.success() {
            return Err(AcpxError::Agent(format!(
                "acpx --version exited with {}",
                out.status
            )));
        }
        let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(v.rsplit(' ').next().unwrap_or(&v).to_string())
    }

    /// `sessions new --name <name>`: creates the acpx session record; returns acpx's record id.
    pub async fn new_session(
        &self,
        agent: &AgentCommand,
        cwd: &Path,
        name: &str,
    ) -> Result<Option<String>, AcpxError> {
        let mut args = self.args(agent, cwd, None);
        args.extend([
            "sessions".into(),
            "new".into(),
            "--name".into(),
            name.into(),
        ]);
        let out = self.run(args).await?;
        if !out.status.success() {
            return Err(AcpxError::Agent(failure("sessions new", &out)));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|v| v["acpxRecordId"].as_str().map(str::to_string)))
    }

    /// `sessions ensure --name <name>`: brings back a record that acpx lost.
    pub async fn ensure_session(
        &self,
        agent: &AgentCommand,
        cwd: &Path,
        name: &str,
    ) -> Result<(), AcpxError> {
        let mut args = self.args(agent, cwd, None);
        args.extend([
            "sessions".into(),
            "ensure".into(),
            "--name".into(),
            name.into(),
        ]);
        let out = self.run(args).await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(AcpxError::Agent(failure("sessions ensure", &out)))
        }
    }

    /// `sessions close <name>`. Closing a session acpx already closed is not an error.
    pub async fn close_session(
        &self,
        agent: &AgentCommand,
        cwd: &Path,
        name: &str,
    ) -> Result<(), AcpxError> {
        let mut args = self.args(agent, cwd, None);
        args.extend(["sessions".into(), "close".into(), name.into()]);
        let out = self.run(args).await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(AcpxError::Agent(failure("sessions close", &out)))
        }
    }

    /// `cancel -s <name>`: stops the session's running turn, if any.
    pub async fn cancel(
        &self,
        agent: &AgentCommand,
        cwd: &Path,
        name: &str,
    ) -> Result<bool, AcpxError> {
        let mut args = self.args(agent, cwd, None);
        args.extend(["cancel".into(), "-s".into(), name.into()]);
        let out = self.run(args).await?;
        if !out.status.success() {
            return Err(AcpxError::Agent(failure("cancel", &out)));
        }
        let cancelled = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| v["cancelled"] == Value::Bool(true));
        Ok(cancelled)
    }

    /// One turn: `prompt -s <name> <text>`, with acpx's `--timeout`. On a timeout the turn is
    /// cancelled before this returns, so the agent is free for the next turn.
    pub async fn prompt(
        &self,
        agent: &AgentCommand,
        cwd: &Path,
        name: &str,
        text: &str,
        timeout: Duration,
    ) -> Result<TurnOutput, AcpxError> {
        let result = self.prompt_once(agent, cwd, name, text, timeout).await;
        if result == Err(AcpxError::Timeout) {
            match self.cancel(agent, cwd, name).await {
                Ok(cancelled) => {
                    tracing::info!(session = name, cancelled, "timed-out turn cancelled")
                }
                Err(e) => tracing::warn!(session = name, error = %e, "cancel after timeout failed"),
            }
        }
        result
    }

    async fn prompt_once(
        &self,
        agent: &AgentCommand,
        cwd: &Path,
        name: &str,
        text: &str,
        timeout: Duration,
    ) -> Result<TurnOutput, AcpxError> {
        let secs = timeout.as_secs().max(1);
        let mut args = self.args(agent, cwd, Some(secs));
        // The prompt goes in on stdin as ACP content blocks: byte-exact, no argv size limit, and
        // a prompt that starts with '-' is never read as an option.
        args.extend([
            "prompt".into(),
            "-s".into(),
            name.into(),
            "--file".into(),
            "-".into(),
        ]);
        let blocks = serde_json::to_vec(&serde_json::json!([{"type": "text", "text": text}]))
            .expect("prompt serializes");
        let mut cmd = process::command(&self.bin, &args);
        cmd.stdin(std::process::Stdio::piped());
        let mut child = process::spawn(&mut cmd)
            .await
            .map_err(|e| self.spawn_error(e))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let feed = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(&blocks).await;
            let _ = stdin.shutdown().await;
        });
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let stderr_task = tokio::spawn(read_tail(stderr, 4096));

        let mut stream = PromptStream::default();
        let mut reader = BufReader::new(stdout);
        let read = async {
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = AsyncReadExt::take(&mut reader, MAX_LINE as u64)
                    .read_until(b'\n', &mut line)
                    .await
                    .map_err(|e| AcpxError::BadOutput(e.to_string()))?;
                if n == 0 {
                    return Ok(None);
                }
                if let Some(done) = stream.feed(&line) {
                    return Ok(Some(done));
                }
            }
        };
        let deadline = timeout + TIMEOUT_SLACK;
        let outcome = tokio::time::timeout(deadline, read).await;
        feed.abort();
        let outcome = match outcome {
            Ok(r) => r,
            Err(_) => {
                process::kill_group(pid);
                return Err(AcpxError::Timeout);
            }
        };
        match outcome {
            Ok(Some(done)) => {
                // The answer is in; acpx lingers about a second before it exits. Let it finish
                // on its own rather than make the caller wait for it.
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(CONTROL_TIMEOUT, child.wait()).await;
                });
                done
            }
            Ok(None) => {
                let status = tokio::time::timeout(CONTROL_TIMEOUT, child.wait())
                    .await
                    .map_err(|_| AcpxError::BadOutput("acpx did not exit".into()))?
                    .map_err(|e| AcpxError::BadOutput(e.to_string()))?;
                let stderr = stderr_task.await.unwrap_or_default();
                stream.finish(status, &stderr)
            }
            Err(e) => {
                process::kill_group(pid);
                Err(e)
            }
        }
    }

    async fn run(&self, args: Vec<String>) -> Result<std::process::Output, AcpxError> {
        let child = process::spawn(&mut process::command(&self.bin, &args))
            .await
            .map_err(|e| self.spawn_error(e))?;
        let pid = child.id();
        match tokio::time::timeout(CONTROL_TIMEOUT, child.wait_with_output()).await {
            Ok(out) => out.map_err(|e| AcpxError::BadOutput(e.to_string())),
            Err(_) => {
                process::kill_group(pid);
                Err(AcpxError::Agent(format!(
                    "acpx {} did not finish within {}s",
                    args.iter()
                        .rev()
                        .take(3)
                        .rev()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(" "),
                    CONTROL_TIMEOUT.as_secs()
                )))
            }
        }
    }

    /// Removes acpx's on-disk record of a closed session (`$HOME/.acpx/sessions/<id>.json` and
    /// its event log). acpx itself can only prune all closed sessions of an agent at once.
    pub fn delete_record(&self, record_id: &str) -> std::io::Result<usize> {
        let Some(home) = std::env::var_os("HOME") else {
            return Ok(0);
        };
        let dir = Path::new(&home).join(".acpx/sessions");
        let name = encode_uri_component(record_id);
        let stream_prefix = format!("{name}.stream.");
        let mut removed = 0;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let file = entry.file_name();
            let file = file.to_string_lossy();
            if file == format!("{name}.json") || file.starts_with(&stream_prefix) {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn spawn_error(&self, e: std::io::Error) -> AcpxError {
        AcpxError::Spawn {
            bin: self.bin.clone(),
            reason: e.to_string(),
        }
    }
}

fn failure(what: &str, out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let message = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| error_message(&v))
        .unwrap_or_else(|| {
            let stderr = String::from_utf8_lossy(&out.stderr);
            last_line(&stderr).to_string()
        });
    format!(
        "acpx {what} exited with {}: {message}",
        exit_text(out.status.code())
    )
}

/// JavaScript's `encodeURIComponent`, which acpx uses for its record file names.
fn encode_uri_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The message of a JSON-RPC error line, with acpx's code when it gives one.
fn error_message(v: &Value) -> Option<String> {
    let err = v.get("error")?;
    let message = err["message"].as_str().unwrap_or("unknown error");
    match err["data"]["acpxCode"].as_str() {
        Some(code) => Some(format!("{code}: {message}")),
        None => Some(message.to_string()),
    }
}

/// Reads acpx's NDJSON stream of one `prompt`: the raw ACP messages of both directions.
/// The turn is the `session/prompt` request, the `session/update` notifications after it, and
/// the response with the request's id.
#[derive(Debug, Default)]
pub struct PromptStream {
    prompt_id: Option<Value>,
    output: String,
    truncated: bool,
    cancelled: Option<TurnOutput>,
    errors: Vec<(Option<String>, String)>,
}

impl PromptStream {
    /// Feeds one line; returns the turn's result once its response has been read.
    pub fn feed(&mut self, line: &[u8]) -> Option<Result<TurnOutput, AcpxError>> {
        let v: Value = serde_json::from_slice(line).ok()?;
        if v["method"] == "session/prompt" && v.get("id").is_some() {
            self.prompt_id = Some(v["id"].clone());
            self.output.clear();
            return None;
        }
        if let Some(id) = &self.prompt_id {
            if v.get("id") == Some(id) && v.get("method").is_none() {
                if let Some(result) = v.get("result") {
                    let stop_reason = result["stopReason"].as_str().unwrap_or("end_turn");
                    let mut output = std::mem::take(&mut self.output);
                    if self.truncated {
                        output.push_str("\n[output truncated]");
                    }
                    let done = TurnOutput {
                        output,
                        stop_reason: stop_reason.to_string(),
                    };
                    if stop_reason == "cancelled" {
                        // acpx's own timeout cancels the turn too: only the exit tells.
                        self.cancelled = Some(done);
                        return None;
                    }
                    return Some(Ok(done));
                }
                if v.get("error").is_some() {
                    let message = error_message(&v).unwrap_or_default();
                    return Some(Err(AcpxError::Agent(message)));
                }
            }
            if v["method"] == "session/update" {
                let update = &v["params"]["update"];
                if update["sessionUpdate"] == "agent_message_chunk"
                    && update["content"]["type"] == "text"
                {
                    if let Some(text) = update["content"]["text"].as_str() {
                        if self.output.len() + text.len() <= MAX_OUTPUT {
                            self.output.push_str(text);
                        } else {
                            self.truncated = true;
                        }
                    }
                }
                return None;
            }
        }
        if v.get("error").is_some() && v.get("method").is_none() {
            let code = v["error"]["data"]["acpxCode"].as_str().map(str::to_string);
            let message = error_message(&v).unwrap_or_default();
            self.errors.push((code, message));
        }
        None
    }

    /// How the turn ended, once acpx has exited: a cancelled turn, or why there was no result.
    pub fn finish(&mut self, status: ExitStatus, stderr: &str) -> Result<TurnOutput, AcpxError> {
        match self.cancelled.take() {
            Some(done) if status.success() && self.errors.is_empty() => Ok(done),
            _ => Err(self.failure(status, stderr)),
        }
    }

    /// Why acpx ended without the turn's response.
    pub fn failure(&self, status: ExitStatus, stderr: &str) -> AcpxError {
        let has_code = |c: &str| {
            self.errors
                .iter()
                .any(|(code, _)| code.as_deref() == Some(c))
        };
        if status.code() == Some(3) || has_code("TIMEOUT") {
            return AcpxError::Timeout;
        }
        if status.code() == Some(4) || has_code("NO_SESSION") {
            return AcpxError::NoSession;
        }
        let message = self
            .errors
            .last()
            .map(|(_, m)| m.clone())
            .or_else(|| Some(last_line(stderr).to_string()).filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "no result from the agent".into());
        AcpxError::Agent(format!(
            "acpx exited with {}: {message}",
            exit_text(status.code())
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn run_fixture(text: &str) -> (PromptStream, Option<Result<TurnOutput, AcpxError>>) {
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
        let (_, done) = run_fixture(text);
        assert_eq!(
            done,
            Some(Ok(TurnOutput {
                output: "echo: hi".into(),
                stop_reason: "end_turn".into()
            }))
        );
    }

    fn fixture(name: &str) -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/acpx/");
        std::fs::read_to_string(format!("{path}{name}")).unwrap()
    }

    #[test]
    fn recorded_acpx_runs() {
        let ok = |out: &str| {
            Some(Ok(TurnOutput {
                output: out.into(),
                stop_reason: "end_turn".into(),
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
            Err(AcpxError::Agent(m)) => assert!(m.contains("disconnected"), "{m}"),
            other => panic!("{other:?}"),
        }
        let (mut s, done) = run_fixture(&fixture("prompt-timeout.ndjson"));
        assert!(done.is_none());
        assert_eq!(s.finish(exit(3), ""), Err(AcpxError::Timeout));
        let (_, done) = run_fixture(&fixture("prompt-agent-error.ndjson"));
        assert!(matches!(done, Some(Err(AcpxError::Agent(_)))), "{done:?}");
        let (mut s, done) = run_fixture(&fixture("prompt-cancelled.ndjson"));
        assert!(done.is_none());
        assert_eq!(s.finish(exit(0), "").unwrap().stop_reason, "cancelled");
        let (s, _) = run_fixture(&fixture("prompt-no-session.ndjson"));
        assert_eq!(s.failure(exit(4), ""), AcpxError::NoSession);
    }

    #[test]
    fn record_file_names_are_uri_encoded() {
        assert_eq!(encode_uri_component("test-1_a.b"), "test-1_a.b");
        assert_eq!(encode_uri_component("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_uri_component("ü"), "%C3%BC");
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
            Err(AcpxError::Timeout)
        );
        let (mut s, _) = run_fixture(text);
        assert_eq!(
            s.finish(ExitStatus::from_raw(0), "").unwrap().stop_reason,
            "cancelled"
        );
    }

    #[test]
    fn an_error_response_to_the_prompt_is_an_agent_error() {
        let text = r#"{"jsonrpc":"2.0","id":"p","method":"session/prompt","params":{}}
{"jsonrpc":"2.0","id":"p","error":{"code":-32603,"message":"boom"}}
"#;
        let (_, done) = run_fixture(text);
        assert_eq!(done, Some(Err(AcpxError::Agent("boom".into()))));
    }

    #[test]
    fn exit_codes_and_error_lines_map_to_failures() {
        let text = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"agent went away","data":{"acpxCode":"AGENT_DISCONNECTED"}}}"#;
        let (s, done) = run_fixture(text);
        assert!(done.is_none());
        match s.failure(ExitStatus::from_raw(1 << 8), "") {
            AcpxError::Agent(m) => assert!(m.contains("AGENT_DISCONNECTED"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            PromptStream::default().failure(ExitStatus::from_raw(3 << 8), ""),
            AcpxError::Timeout
        );
        assert_eq!(
            PromptStream::default().failure(ExitStatus::from_raw(4 << 8), ""),
            AcpxError::NoSession
        );
        match PromptStream::default().failure(ExitStatus::from_raw(2 << 8), "usage: bad flag\n") {
            AcpxError::Agent(m) => assert!(m.contains("usage: bad flag"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
