//! A turn through `acpx prompt`: started (again while acpx's queue owner is still starting),
//! its output read into the prompt's sink, a cancel passed on until the agent has been told, and
//! a prompt given up on drained in the background before the session's next prompt.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::ChildStdout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::command::{Cli, CONTROL_TIMEOUT, STDERR_TAIL};
use super::failure::Failure;
use super::stream::PromptStream;
use crate::agent::backend::{AgentSession, Prompt, StopReason, TurnEnd, CANCEL_GRACE};
use crate::agent::process::{read_tail, Spawned};
use crate::wire::EventBody;

/// Longest stdout line we accept from acpx (one JSON-RPC message).
const MAX_LINE: usize = 16 * 1024 * 1024;
/// How long a prompt given up on goes on being cancelled and read in the background, at most.
const CANCEL_PERSISTS: Duration = Duration::from_secs(120);
/// How soon `acpx cancel` is sent again while the agent has not been told.
const CANCEL_RETRY: Duration = Duration::from_millis(250);
/// How many times a prompt is sent while acpx's queue owner is still starting.
const OWNER_START_TRIES: u32 = 4;
/// Slack on top of a turn's timeout before we stop waiting for acpx to report it.
const TIMEOUT_SLACK: Duration = Duration::from_secs(15);

/// The prompts of sessions through acpx, and those given up on that acpx may still run.
#[derive(Debug, Clone)]
pub(super) struct Prompts {
    cli: Cli,
    /// Prompts given up on that acpx may still run, shared by the clones.
    drains: Arc<Drains>,
}

impl Prompts {
    pub(super) fn new(cli: Cli) -> Prompts {
        Prompts {
            cli,
            drains: Arc::default(),
        }
    }

    /// The same prompts, run by `cli` from now on.
    pub(super) fn with_cli(self, cli: Cli) -> Prompts {
        Prompts { cli, ..self }
    }

    /// Runs one turn: after the session's prompt given up on, if there is one; the session
    /// made again when acpx has lost its record.
    pub(super) async fn run(&self, s: &AgentSession, p: &Prompt<'_>) -> Result<TurnEnd, Failure> {
        // A prompt of the session given up on goes first: the agent must be done with it.
        if let Some(cancelled) = self.wait_for_drain(s, p).await? {
            return Ok(cancelled);
        }
        match self.prompt_started(s, p).await {
            Err(Failure::NoSession) => {
                // acpx lost its record: bring it back and try again, within the same deadline.
                tracing::warn!("acpx had no record of the session; re-creating it");
                self.cli.session_command(s, "ensure").await?;
                self.prompt_started(s, p).await
            }
            other => other,
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
    /// and cancelled in the background: see [`Prompts::drain`].
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
        let timeout_secs = left.as_secs().max(1);
        let mut child = self.cli.start_prompt(s, p.text, timeout_secs).await?;
        let stderr = tokio::spawn(read_tail(child.take_stderr(), STDERR_TAIL));
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
                    run.cancel(&self.cli, s);
                }
                _ = &mut hard_stop => return Read::CutShort,
            }
        }
    }
    /// Goes on, in the background, with a prompt this worker gave up on: tells acpx to cancel
    /// it until the agent has been told, and reads acpx's output until it ends (at most
    /// `CANCEL_PERSISTS`), so that the agent does not go on with it ahead of the session's next
    /// prompt, which waits for this (see [`Prompts::wait_for_drain`]).
    fn drain(&self, s: &AgentSession, mut run: Running) {
        let done = self.drains.begin(&s.id);
        let (prompts, session) = (self.clone(), s.clone());
        tokio::spawn(async move {
            run.cancel(&prompts.cli, &session);
            let read = tokio::time::timeout(CANCEL_PERSISTS, run.read_to_end()).await;
            if read.is_err() {
                tracing::warn!("acpx never ended a prompt given up on; the agent may still run it");
            }
            // Kills acpx's client if it still runs, and stops cancelling.
            drop(run);
            done.cancel();
            prompts.drains.forget_done();
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
}

/// `acpx cancel`, again and again, until aborted: by whoever reads the prompt's output, once
/// it shows the agent told (acpx's `session/cancel` to it) or the prompt over. acpx's own
/// answer does not tell: `cancelled: true` means that its queue owner had a turn under way,
/// and that may be the previous turn in its last second (after a result acpx waits about a
/// second for the agent's last updates). A cancel taken then is dropped when that turn
/// ends, and the prompt after it, this one, is never told.
async fn cancel_until_told(cli: Cli, s: AgentSession) {
    loop {
        match cli.cancel(&s).await {
            Ok(cancelled) => tracing::debug!(cancelled, "acpx cancel sent"),
            Err(f) => {
                let e = cli.error(f);
                tracing::warn!(error = %e, "acpx cancel failed; trying again")
            }
        }
        tokio::time::sleep(CANCEL_RETRY).await;
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
    fn cancel(&mut self, cli: &Cli, s: &AgentSession) {
        if matches!(self.cancelling, Cancelling::No) {
            let sending = tokio::spawn(cancel_until_told(cli.clone(), s.clone()));
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
