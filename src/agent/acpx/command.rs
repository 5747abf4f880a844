//! The acpx commands a session runs: their argv, and running them in the session's jail. The
//! control commands (version, new, ensure, cancel, close) run to their end within bounds; a
//! prompt is only started here.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::failure::{error_message, Failure};
use crate::agent::backend::{AgentError, AgentSession};
use crate::agent::confine::{Confinement, Jail, Work};
use crate::agent::def::{AgentCommand, PermissionPolicy};
use crate::agent::process::{exit_text, last_line, Ended, Spawned, Spec};

/// Longest output of a control command (new, ensure, close, cancel, version).
const MAX_CONTROL_OUTPUT: usize = 1024 * 1024;
/// How much of acpx's stderr is kept for messages.
pub(super) const STDERR_TAIL: usize = 4096;
/// Time allowed for the quick acpx commands (new, close, cancel, version).
pub(super) const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

/// What acpx printed, and how it exited.
pub(super) struct Output {
    pub(super) status: ExitStatus,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

impl Output {
    pub(super) fn json_lines(&self) -> impl Iterator<Item = Value> + '_ {
        self.stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    }

    /// Why a control command failed, from its error line or its stderr.
    pub(super) fn failure(&self, what: &str) -> Failure {
        let message = self
            .json_lines()
            .find_map(|v| error_message(&v))
            .unwrap_or_else(|| last_line(&self.stderr).to_string());
        Failure::Agent(format!(
            "acpx {what} exited with {}: {message}",
            exit_text(self.status.code())
        ))
    }
}

/// The acpx program and how every session runs it: its records kept for `ttl_secs` by its
/// queue owner, each session's processes in its app's home under `confinement`.
#[derive(Debug, Clone)]
pub(super) struct Cli {
    bin: String,
    ttl_secs: u64,
    confinement: Arc<Confinement>,
}

impl Cli {
    pub(super) fn new(bin: String, ttl_secs: u64, confinement: Arc<Confinement>) -> Cli {
        Cli {
            bin,
            ttl_secs,
            confinement,
        }
    }

    /// The same program, run under `confinement`.
    pub(super) fn confined(self, confinement: Arc<Confinement>) -> Cli {
        Cli {
            confinement,
            ..self
        }
    }

    pub(super) fn bin(&self) -> &str {
        &self.bin
    }

    pub(super) fn error(&self, f: Failure) -> AgentError {
        f.into_agent_error(&self.bin)
    }

    /// The home acpx runs in for `app`, where it keeps its records: the app's own, or the
    /// worker's when not confined.
    pub(super) fn home(&self, app: &str) -> Option<PathBuf> {
        self.confinement
            .home(app)
            .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
    }

    /// What the processes of session `s` get.
    fn jail(&self, s: &AgentSession) -> Result<Option<Jail>, Failure> {
        self.confinement
            .jail(&s.app, &s.cwd, Work::Session)
            .map_err(|e| Failure::Agent(format!("preparing the app's home: {e}")))
    }

    fn args(&self, s: &AgentSession, timeout: Option<u64>) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--format".into(),
            "json".into(),
            "--json-strict".into(),
            permission_flag(s.permissions).into(),
            "--cwd".into(),
            s.cwd.to_string_lossy().into_owned(),
            "--ttl".into(),
            self.ttl_secs.to_string(),
        ];
        if let Some(t) = timeout {
            args.extend(["--timeout".into(), t.to_string()]);
        }
        match &s.command {
            AgentCommand::Builtin(name) => args.push(name.clone()),
            AgentCommand::Custom(cmd) => args.extend(["--agent".into(), cmd.clone()]),
        }
        args
    }

    /// `acpx --version`.
    pub(super) async fn version_text(&self) -> Result<String, Failure> {
        let out = self.run(vec!["--version".into()], None).await?;
        if !out.status.success() {
            return Err(out.failure("--version"));
        }
        let v = out.stdout.trim();
        Ok(v.rsplit(' ').next().unwrap_or(v).to_string())
    }

    /// `sessions new|ensure --name <id>`.
    pub(super) async fn session_command(
        &self,
        s: &AgentSession,
        verb: &str,
    ) -> Result<Output, Failure> {
        self.command(s, &["sessions", verb, "--name", &s.id]).await
    }

    /// A control command of one session; a non-zero exit is a failure.
    pub(super) async fn command(
        &self,
        s: &AgentSession,
        words: &[&str],
    ) -> Result<Output, Failure> {
        let mut args = self.args(s, None);
        args.extend(words.iter().map(|w| w.to_string()));
        let out = self.run(args, self.jail(s)?.as_ref()).await?;
        if out.status.success() {
            Ok(out)
        } else {
            let what: Vec<&str> = words
                .iter()
                .copied()
                .take_while(|w| !w.starts_with('-') && *w != s.id)
                .collect();
            Err(out.failure(&what.join(" ")))
        }
    }

    /// Runs acpx to its end, within `CONTROL_TIMEOUT` and `MAX_CONTROL_OUTPUT`.
    async fn run(&self, args: Vec<String>, jail: Option<&Jail>) -> Result<Output, Failure> {
        let spawned = Spawned::start(Spec {
            program: &self.bin,
            args: &args,
            jail,
            ..Default::default()
        })
        .await
        .map_err(|e| Failure::Spawn(e.to_string()))?;
        let what = || {
            args.iter()
                .rev()
                .take(3)
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        };
        match spawned
            .collect(MAX_CONTROL_OUTPUT, STDERR_TAIL, CONTROL_TIMEOUT)
            .await
            .map_err(|e| Failure::Agent(e.to_string()))?
        {
            Ended::TimedOut { .. } => Err(Failure::Agent(format!(
                "acpx {} did not finish within {}s",
                what(),
                CONTROL_TIMEOUT.as_secs()
            ))),
            Ended::Exited(c) => match c.stdout {
                None => Err(Failure::Agent(format!(
                    "acpx {} printed more than {MAX_CONTROL_OUTPUT} bytes",
                    what()
                ))),
                Some(stdout) => Ok(Output {
                    status: c.status,
                    stdout: String::from_utf8_lossy(&stdout).into_owned(),
                    stderr: c.stderr,
                }),
            },
        }
    }

    /// `acpx cancel`: whether acpx's queue owner had a turn of the session under way.
    pub(super) async fn cancel(&self, s: &AgentSession) -> Result<bool, Failure> {
        let out = self.command(s, &["cancel", "-s", &s.id]).await?;
        let cancelled = out
            .json_lines()
            .any(|v| v["cancelled"] == Value::Bool(true));
        Ok(cancelled)
    }

    /// Starts `acpx prompt` with the prompt's text, for at most `timeout_secs`.
    pub(super) async fn start_prompt(
        &self,
        s: &AgentSession,
        text: &str,
        timeout_secs: u64,
    ) -> Result<Spawned, Failure> {
        let mut args = self.args(s, Some(timeout_secs));
        // The prompt goes in on stdin as ACP content blocks: byte-exact, no argv size limit, and
        // a prompt that starts with '-' is never read as an option.
        args.extend(["prompt", "-s", &s.id, "--file", "-"].map(String::from));
        let blocks = serde_json::to_vec(&serde_json::json!([{"type": "text", "text": text}]))
            .expect("prompt serializes");
        let jail = self.jail(s)?;
        Spawned::start(Spec {
            program: &self.bin,
            args: &args,
            stdin: Some(blocks),
            jail: jail.as_ref(),
            ..Default::default()
        })
        .await
        .map_err(|e| Failure::Spawn(e.to_string()))
    }
}

/// acpx's own flag for a permission policy (`ask` is refused at config load for acpx).
fn permission_flag(p: PermissionPolicy) -> &'static str {
    match p {
        PermissionPolicy::AllowAll | PermissionPolicy::Ask => "--approve-all",
        PermissionPolicy::AllowReads => "--approve-reads",
        PermissionPolicy::DenyAll => "--deny-all",
    }
}
