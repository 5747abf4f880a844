//! Sessions through the acpx CLI (pinned: 0.19.1): the first [`Backend`].
//!
//! Every call names the session by our UUID and runs in the session's own directory, so the
//! acpx scope key (agent command, cwd, name) is unique. acpx's queue owner keeps the agent warm
//! between turns and serialises turns of one session, across worker processes too. A turn is
//! `acpx prompt`, whose NDJSON (the raw ACP messages of both directions, each written as soon as
//! acpx has it) is read line by line and turned into the contract's events.
//!
//! A cancel is `acpx cancel`, sent again until that output shows acpx's `session/cancel` to the
//! agent, or the prompt's end. A prompt the worker gives up on is read (and cancelled) on in the
//! background, and the session's next prompt waits for its end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::ChildStdout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::confine::{Confinement, Jail, Work};
use super::permission;
use super::process::{exit_text, last_line, Ended, Spawned, Spec};
use super::{
    updates, AgentError, AgentSession, Backend, Opened, Prompt, StopReason, TurnEnd, CANCEL_GRACE,
};
use crate::config::{AgentCommand, PermissionPolicy};
use crate::wire::{DecidedBy, EventBody};

/// Longest stdout line we accept from acpx (one JSON-RPC message).
const MAX_LINE: usize = 16 * 1024 * 1024;
/// Longest output of a control command (new, ensure, close, cancel, version).
const MAX_CONTROL_OUTPUT: usize = 1024 * 1024;
/// How much of acpx's stderr is kept for messages.
const STDERR_TAIL: usize = 4096;
/// Time allowed for the quick acpx commands (new, close, cancel, version).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a prompt given up on goes on being cancelled and read in the background, at most.
const CANCEL_PERSISTS: Duration = Duration::from_secs(120);
/// How soon `acpx cancel` is sent again while the agent has not been told.
const CANCEL_RETRY: Duration = Duration::from_millis(250);
/// How many times a prompt is sent while acpx's queue owner is still starting.
const OWNER_START_TRIES: u32 = 4;
/// Slack on top of a turn's timeout before we stop waiting for acpx to report it.
const TIMEOUT_SLACK: Duration = Duration::from_secs(15);

/// How one acpx call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    Spawn(String),
    Timeout,
    /// acpx has no record of the session (its state directory was wiped).
    NoSession,
    /// acpx's queue owner for the session did not bind its socket in acpx's start-up window
    /// (about 6 s; a loaded machine starting many at once). It goes on starting: the prompt was
    /// never queued, so it can be sent again.
    OwnerNotUp(String),
    Agent(String),
}

impl Failure {
    fn into_agent_error(self, bin: &str) -> AgentError {
        match self {
            Failure::Spawn(reason) => AgentError::Unavailable {
                program: bin.to_string(),
                reason,
            },
            Failure::Timeout => AgentError::Timeout,
            Failure::NoSession => AgentError::Failed("acpx has no record of the session".into()),
            Failure::OwnerNotUp(m) => AgentError::Failed(m),
            Failure::Agent(m) => AgentError::Failed(m),
        }
    }
}

/// What acpx printed, and how it exited.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    fn json_lines(&self) -> impl Iterator<Item = Value> + '_ {
        self.stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    }

    /// Why a control command failed, from its error line or its stderr.
    fn failure(&self, what: &str) -> Failure {
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

#[derive(Debug, Clone)]
pub struct Acpx {
    bin: String,
    ttl_secs: u64,
    confinement: Arc<Confinement>,
    /// Prompts given up on that acpx may still run, shared by the clones.
    drains: Arc<Drains>,
}

#[async_trait::async_trait]
impl Backend for Acpx {
    fn name(&self) -> &'static str {
        "acpx"
    }

    async fn version(&self) -> Result<String, AgentError> {
        self.version_text().await.map_err(|f| self.error(f))
    }

    async fn open(&self, session: &AgentSession) -> Result<Opened, AgentError> {
        let out = self.session_command(session, "new").await;
        let out = out.map_err(|f| self.error(f))?;
        let record = out
            .json_lines()
            .find_map(|v| v["acpxRecordId"].as_str().map(str::to_string));
        Ok(Opened { state: record })
    }

    async fn prompt(
        &self,
        session: &AgentSession,
        prompt: Prompt<'_>,
    ) -> Result<TurnEnd, AgentError> {
        // A prompt of the session given up on goes first: the agent must be done with it.
        match self.wait_for_drain(session, &prompt).await {
            Ok(None) => {}
            Ok(Some(cancelled)) => return Ok(cancelled),
            Err(f) => return Err(self.error(f)),
        }
        let result = match self.prompt_started(session, &prompt).await {
            Err(Failure::NoSession) => {
                // acpx lost its record: bring it back and try again, within the same deadline.
                tracing::warn!("acpx had no record of the session; re-creating it");
                match self.session_command(session, "ensure").await {
                    Ok(_) => self.prompt_started(session, &prompt).await,
                    Err(f) => Err(f),
                }
            }
            other => other,
        };
        if result == Err(Failure::Timeout) {
            // acpx cancels a turn at its own --timeout; this makes sure, for the slack case.
            let _ = self.cancel(session).await;
        }
        result.map_err(|f| self.error(f))
    }

    async fn cancel(&self, session: &AgentSession) -> Result<bool, AgentError> {
        let out = self
            .command(session, &["cancel", "-s", &session.id])
            .await
            .map_err(|f| self.error(f))?;
        let cancelled = out
            .json_lines()
            .any(|v| v["cancelled"] == Value::Bool(true));
        Ok(cancelled)
    }

    async fn close(&self, session: &AgentSession) -> Result<(), AgentError> {
        self.command(session, &["sessions", "close", &session.id])
            .await
            .map(drop)
            .map_err(|f| self.error(f))
    }

    async fn forget(&self, session: &AgentSession) -> Result<(), AgentError> {
        let Some(record) = &session.state else {
            return Ok(());
        };
        let home = self
            .confinement
            .home(&session.app)
            .or_else(|| std::env::var_os("HOME").map(PathBuf::from));
        let Some(home) = home else {
            return Ok(());
        };
        delete_record(&home, record)
            .map(drop)
            .map_err(|e| AgentError::Failed(format!("removing acpx's record failed: {e}")))
    }
}

impl Acpx {
    pub fn new(bin: impl Into<String>, ttl_secs: u64) -> Acpx {
        Acpx {
            bin: bin.into(),
            ttl_secs,
            confinement: Arc::new(Confinement::none()),
            drains: Arc::default(),
        }
    }

    /// Runs every command of a session in its app's home, under `confinement`.
    pub fn confined(self, confinement: Arc<Confinement>) -> Acpx {
        Acpx {
            confinement,
            ..self
        }
    }

    /// What the processes of session `s` get.
    fn jail(&self, s: &AgentSession) -> Result<Option<Jail>, Failure> {
        self.confinement
            .jail(&s.app, &s.cwd, Work::Session)
            .map_err(|e| Failure::Agent(format!("preparing the app's home: {e}")))
    }

    pub fn bin(&self) -> &str {
        &self.bin
    }

    fn error(&self, f: Failure) -> AgentError {
        f.into_agent_error(&self.bin)
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
    async fn version_text(&self) -> Result<String, Failure> {
        let out = self.run(vec!["--version".into()], None).await?;
        if !out.status.success() {
            return Err(out.failure("--version"));
        }
        let v = out.stdout.trim();
        Ok(v.rsplit(' ').next().unwrap_or(v).to_string())
    }

    /// `sessions new|ensure --name <id>`.
    async fn session_command(&self, s: &AgentSession, verb: &str) -> Result<Output, Failure> {
        self.command(s, &["sessions", verb, "--name", &s.id]).await
    }

    /// A control command of one session; a non-zero exit is a failure.
    async fn command(&self, s: &AgentSession, words: &[&str]) -> Result<Output, Failure> {
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

    /// `acpx prompt`, sent again while acpx reports that the session's queue owner is still
    /// starting (nothing was queued), within the turn's deadline and `OWNER_START_TRIES`.
    async fn prompt_started(&self, s: &AgentSession, p: &Prompt<'_>) -> Result<TurnEnd, Failure> {
        let mut tries = 1;
        loop {
            match self.prompt_once(s, p).await {
                Err(Failure::OwnerNotUp(m))
                    if tries < OWNER_START_TRIES && !p.cancel.is_cancelled() =>
                {
                    tracing::warn!(
                        try_number = tries,
                        "acpx's queue owner was not up in time; sending the prompt again: {m}"
                    );
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    /// One `acpx prompt`, its events into the sink as they come. A prompt given up on (cut
    /// short by a cancel acpx did not finish in time, or past the deadline) goes on being read
    /// and cancelled in the background: see [`Acpx::drain`].
    async fn prompt_once(&self, s: &AgentSession, p: &Prompt<'_>) -> Result<TurnEnd, Failure> {
        let left = p.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::Timeout);
        }
        let mut run = self.start_prompt(s, p, left).await?;
        match self.read_turn(s, p, &mut run, left + TIMEOUT_SLACK).await {
            Read::Done(done) => {
                // The answer is in; acpx lingers about a second before it exits. Let it finish
                // on its own rather than make the caller wait for it.
                run.child.finish_in_background(CONTROL_TIMEOUT);
                done
            }
            Read::Eof => run.finish().await,
            Read::CutShort => {
                let end = if p.cancel.is_cancelled() {
                    Ok(run.output.stream.cut_short())
                } else {
                    Err(Failure::Timeout)
                };
                self.drain(s, run);
                end
            }
        }
    }

    /// Starts `acpx prompt` with the prompt's text, for at most `left`.
    async fn start_prompt(
        &self,
        s: &AgentSession,
        p: &Prompt<'_>,
        left: Duration,
    ) -> Result<Running, Failure> {
        let mut args = self.args(s, Some(left.as_secs().max(1)));
        // The prompt goes in on stdin as ACP content blocks: byte-exact, no argv size limit, and
        // a prompt that starts with '-' is never read as an option.
        args.extend(["prompt", "-s", &s.id, "--file", "-"].map(String::from));
        let blocks = serde_json::to_vec(&serde_json::json!([{"type": "text", "text": p.text}]))
            .expect("prompt serializes");
        let jail = self.jail(s)?;
        let mut child = Spawned::start(Spec {
            program: &self.bin,
            args: &args,
            stdin: Some(blocks),
            jail: jail.as_ref(),
            ..Default::default()
        })
        .await
        .map_err(|e| Failure::Spawn(e.to_string()))?;
        let stderr = tokio::spawn(super::process::read_tail(child.take_stderr(), STDERR_TAIL));
        let output = TurnOutput {
            reader: BufReader::new(child.take_stdout()),
            stream: PromptStream::default(),
            line: Vec::new(),
        };
        Ok(Running {
            child,
            stderr,
            output,
            cancelling: Cancelling::No,
        })
    }

    /// Reads the turn's lines until its result, acpx's exit, the deadline or a cancel that
    /// acpx does not answer in time. A cancel is passed on to acpx until the agent has been
    /// told, and the reading goes on: the turn then ends with `cancelled` and what the agent
    /// had said.
    async fn read_turn(
        &self,
        s: &AgentSession,
        p: &Prompt<'_>,
        run: &mut Running,
        limit: Duration,
    ) -> Read {
        let mut hard_stop = Box::pin(tokio::time::sleep(limit));
        loop {
            tokio::select! {
                step = run.output.read() => match step {
                    Err(failure) => return Read::Done(Err(failure)),
                    Ok(Step::Eof) => return Read::Eof,
                    Ok(Step::Line { events, done, settled }) => {
                        if settled {
                            run.cancelling = Cancelling::Settled;
                        }
                        for event in events {
                            p.sink.emit(event).await;
                        }
                        if let Some(done) = done {
                            return Read::Done(done);
                        }
                    }
                },
                _ = p.cancel.cancelled(), if matches!(run.cancelling, Cancelling::No) => {
                    hard_stop = Box::pin(tokio::time::sleep(CANCEL_GRACE));
                    run.cancel(self, s);
                }
                _ = &mut hard_stop => return Read::CutShort,
            }
        }
    }

    /// Goes on, in the background, with a prompt this worker gave up on: tells acpx to cancel
    /// it until the agent has been told, and reads acpx's output until it ends (at most
    /// `CANCEL_PERSISTS`), so that the agent does not go on with it ahead of the session's next
    /// prompt, which waits for this (see [`Acpx::wait_for_drain`]).
    fn drain(&self, s: &AgentSession, mut run: Running) {
        let done = self.drains.begin(&s.id);
        let (acpx, session) = (self.clone(), s.clone());
        tokio::spawn(async move {
            run.cancel(&acpx, &session);
            let read = tokio::time::timeout(CANCEL_PERSISTS, run.read_to_end()).await;
            if read.is_err() {
                tracing::warn!("acpx never ended a prompt given up on; the agent may still run it");
            }
            // Kills acpx's client if it still runs, and stops cancelling.
            drop(run);
            done.cancel();
            acpx.drains.forget_done();
        });
    }

    /// Waits until no prompt of the session that this worker gave up on is still going, within
    /// the turn's deadline. `Some`: the turn was cancelled meanwhile, before acpx had it.
    async fn wait_for_drain(
        &self,
        s: &AgentSession,
        p: &Prompt<'_>,
    ) -> Result<Option<TurnEnd>, Failure> {
        let Some(done) = self.drains.of(&s.id) else {
            return Ok(None);
        };
        tracing::debug!("waiting for the end of the session's prompt given up on");
        tokio::select! {
            _ = done.cancelled() => Ok(None),
            _ = p.cancel.cancelled() => Ok(Some(TurnEnd {
                output: String::new(),
                stop_reason: StopReason::Cancelled,
            })),
            _ = tokio::time::sleep_until(p.deadline.into()) => Err(Failure::Timeout),
        }
    }

    /// `acpx cancel`, again and again, until aborted: by whoever reads the prompt's output, once
    /// it shows the agent told (acpx's `session/cancel` to it) or the prompt over. acpx's own
    /// answer does not tell: `cancelled: true` means that its queue owner had a turn under way,
    /// and that may be the previous turn in its last second (after a result acpx waits about a
    /// second for the agent's last updates). A cancel taken then is dropped when that turn
    /// ends, and the prompt after it, this one, is never told.
    async fn cancel_until_told(&self, s: &AgentSession) {
        loop {
            match self.cancel(s).await {
                Ok(cancelled) => tracing::debug!(cancelled, "acpx cancel sent"),
                Err(e) => tracing::warn!(error = %e, "acpx cancel failed; trying again"),
            }
            tokio::time::sleep(CANCEL_RETRY).await;
        }
    }
}

/// The prompts this worker gave up on that acpx may still be running, per session: a token
/// cancelled once acpx has ended the prompt (or the drain gave up on it).
#[derive(Debug, Default)]
struct Drains(std::sync::Mutex<HashMap<String, CancellationToken>>);

impl Drains {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A drain of `session` begins: the token to cancel when it is over.
    fn begin(&self, session: &str) -> CancellationToken {
        let done = CancellationToken::new();
        self.map().insert(session.to_string(), done.clone());
        done
    }

    /// The drain of `session` that is still going, if there is one.
    fn of(&self, session: &str) -> Option<CancellationToken> {
        self.map()
            .get(session)
            .filter(|done| !done.is_cancelled())
            .cloned()
    }

    /// Forgets the drains that are over.
    fn forget_done(&self) {
        self.map().retain(|_, done| !done.is_cancelled());
    }
}

/// Where telling the agent to stop a prompt stands.
enum Cancelling {
    /// Nobody asked.
    No,
    /// `acpx cancel` goes out again and again, until `_sender` is dropped.
    Sending { _sender: AbortOnDropHandle<()> },
    /// Nothing more to tell: the agent has been told, or the prompt is over.
    Settled,
}

/// One `acpx prompt` being read: the process, its output, and the cancel sent to it.
struct Running {
    child: Spawned,
    stderr: tokio::task::JoinHandle<String>,
    output: TurnOutput,
    cancelling: Cancelling,
}

impl Running {
    /// Tells acpx to cancel the prompt until the agent has been told, unless it has been.
    fn cancel(&mut self, acpx: &Acpx, s: &AgentSession) {
        if matches!(self.cancelling, Cancelling::No) {
            let (acpx, session) = (acpx.clone(), s.clone());
            let sending = tokio::spawn(async move { acpx.cancel_until_told(&session).await });
            self.cancelling = Cancelling::Sending {
                _sender: AbortOnDropHandle::new(sending),
            };
        }
    }

    /// acpx closed its output: how the turn ended, from its exit.
    async fn finish(mut self) -> Result<TurnEnd, Failure> {
        self.cancelling = Cancelling::Settled;
        let status = self.child.wait(CONTROL_TIMEOUT).await;
        let status = status.ok_or_else(|| Failure::Agent("acpx did not exit".into()))?;
        let status = status.map_err(|e| Failure::Agent(e.to_string()))?;
        let stderr = (&mut self.stderr).await.unwrap_or_default();
        self.output.stream.finish(status, &stderr)
    }

    /// Reads acpx's output to its end, nobody listening; the cancel stops once it is needless.
    async fn read_to_end(&mut self) {
        loop {
            match self.output.read().await {
                Ok(Step::Line { settled, .. }) => {
                    if settled {
                        self.cancelling = Cancelling::Settled;
                    }
                }
                Ok(Step::Eof) | Err(_) => return,
            }
        }
    }
}

/// acpx's output of one prompt, as read so far.
struct TurnOutput {
    reader: BufReader<ChildStdout>,
    stream: PromptStream,
    /// A line read in part when another branch of a select won; the next read goes on with it.
    line: Vec<u8>,
}

/// What one read of acpx's output gave.
enum Step {
    /// A line: the events it made, the turn's end if it was its result, and whether there is
    /// nothing more to tell the agent (it has been told to cancel, or the prompt is over).
    Line {
        events: Vec<EventBody>,
        done: Option<Result<TurnEnd, Failure>>,
        settled: bool,
    },
    /// acpx closed its output.
    Eof,
}

impl TurnOutput {
    /// Reads one line into the stream; a line cut off by another branch of a select is kept.
    async fn read(&mut self) -> Result<Step, Failure> {
        let mut limited = AsyncReadExt::take(&mut self.reader, MAX_LINE as u64);
        match limited.read_until(b'\n', &mut self.line).await {
            Err(e) => Err(Failure::Agent(format!("reading acpx: {e}"))),
            Ok(0) => Ok(Step::Eof),
            Ok(_) => {
                let done = self.stream.feed(&self.line);
                self.line.clear();
                Ok(Step::Line {
                    events: self.stream.take_events(),
                    done,
                    settled: self.stream.settled(),
                })
            }
        }
    }
}

/// Where reading a turn's output stopped.
enum Read {
    /// The turn's result (or its error response) was read.
    Done(Result<TurnEnd, Failure>),
    /// acpx closed its output without a result.
    Eof,
    /// Given up on: past the deadline, or a cancel acpx did not answer in time.
    CutShort,
}

/// A permission request the agent sent in the turn.
#[derive(Debug)]
struct PendingPermission {
    id: Value,
    title: Option<String>,
    tool_call_id: Option<String>,
    options: Vec<Value>,
}

/// Removes acpx's on-disk record of a closed session (`<home>/.acpx/sessions/<id>.json` and
/// its event log, in the home of the session's app). acpx itself can only prune all closed
/// sessions of an agent at once.
fn delete_record(home: &Path, record_id: &str) -> std::io::Result<usize> {
    let dir = home.join(".acpx/sessions");
    let name = encode_uri_component(record_id);
    let stream_prefix = format!("{name}.stream.");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
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

/// Whether acpx reads a file of this name from a session's working directory (its
/// per-directory config, `.acpxrc*`).
pub(super) fn reads_from_cwd(name: &str) -> bool {
    name.starts_with(".acpxrc")
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
    fn feed(&mut self, line: &[u8]) -> Option<Result<TurnEnd, Failure>> {
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
    fn settled(&self) -> bool {
        self.told || self.answered
    }

    /// The events read since the last call.
    fn take_events(&mut self) -> Vec<EventBody> {
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
        self.permissions.push(PendingPermission {
            id: v["id"].clone(),
            title: updates::string(&params["toolCall"]["title"]),
            tool_call_id: updates::string(&params["toolCall"]["toolCallId"]),
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
    fn cut_short(&mut self) -> TurnEnd {
        self.cancelled
            .take()
            .unwrap_or_else(|| self.end(StopReason::Cancelled))
    }

    /// How the turn ended, once acpx has exited: a cancelled turn, or why there was no result.
    fn finish(&mut self, status: ExitStatus, stderr: &str) -> Result<TurnEnd, Failure> {
        match self.cancelled.take() {
            Some(done) if status.success() && self.errors.is_empty() => Ok(done),
            _ => Err(self.failure(status, stderr)),
        }
    }

    /// Why acpx ended without the turn's response.
    fn failure(&self, status: ExitStatus, stderr: &str) -> Failure {
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

/// acpx's own flag for a permission policy (`ask` is refused at config load for acpx).
fn permission_flag(p: PermissionPolicy) -> &'static str {
    match p {
        PermissionPolicy::AllowAll | PermissionPolicy::Ask => "--approve-all",
        PermissionPolicy::AllowReads => "--approve-reads",
        PermissionPolicy::DenyAll => "--deny-all",
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
    fn a_drain_is_waited_for_until_it_is_over() {
        let drains = Drains::default();
        assert!(drains.of("a").is_none());
        let done = drains.begin("a");
        assert!(drains.of("a").is_some());
        assert!(drains.of("b").is_none());
        done.cancel();
        assert!(drains.of("a").is_none());
        drains.forget_done();
        assert!(drains.map().is_empty());
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
