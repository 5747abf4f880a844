//! Multi-turn sessions through acpx.

use std::path::Path;
use std::time::Instant;

use super::files;
use super::types::{Prompt, SessionId};
use super::{now, seconds_from_now, Caller, Forge};
use crate::agent::AcpxError;
use crate::config::AgentCommand;
use crate::error::{Error, ErrorKind, Result};
use crate::ledger::{
    BeginTurn, CloseOutcome, CreateOutcome, EventDetail, Recorded, SessionEvent, SessionRow,
};
use crate::wire;

/// How often a turn waiting for another worker's turn of its session looks again.
const OTHER_WORKER_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Why a turn cancelled at shutdown ended.
const SHUT_DOWN_RUNNING: &str = "the worker shut down during the turn; it was cancelled";

impl From<AcpxError> for Error {
    fn from(e: AcpxError) -> Error {
        match e {
            AcpxError::Timeout => Error::timeout("the agent did not finish within the timeout"),
            AcpxError::Spawn { .. } => {
                tracing::error!(error = %e, "acpx could not be started");
                Error::agent("the agent runner (acpx) is not available on this worker")
            }
            other => Error::agent(other.to_string()),
        }
    }
}

fn session_reply(row: SessionRow) -> wire::Session {
    wire::Session {
        status: if row.open {
            wire::SessionStatus::Open
        } else {
            wire::SessionStatus::Closed
        },
        session_id: row.session_id,
        app: row.app,
        agent: row.agent,
        created_at: row.created_at,
        last_turn_at: row.last_turn_at,
        closed_at: row.closed_at,
        turns: row.turns,
    }
}

/// A turn in the worker's registry of running turns, for as long as it lives.
/// How long a close waits for the cancelled turn of its session to end before it stops the
/// agent anyway.
const CLOSE_WAITS_FOR_TURN: std::time::Duration = std::time::Duration::from_secs(30);

struct RunningTurn<'a> {
    forge: &'a Forge,
    session_id: String,
}

impl<'a> RunningTurn<'a> {
    fn register(forge: &'a Forge, session_id: &str, command: &AgentCommand, cwd: &Path) -> Self {
        forge
            .running_turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session_id.to_string(), (command.clone(), cwd.to_path_buf()));
        RunningTurn {
            forge,
            session_id: session_id.to_string(),
        }
    }
}

impl Drop for RunningTurn<'_> {
    fn drop(&mut self) {
        self.forge
            .running_turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.session_id);
    }
}

impl Forge {
    /// Cancels every turn this worker is running (at shutdown, once the grace period is over).
    pub(super) async fn cancel_running_turns(&self) -> usize {
        let running: Vec<String> = self
            .running_turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for session_id in &running {
            self.cancel_running_turn(session_id, "shutdown").await;
        }
        running.len()
    }

    /// Cancels the turn of `session_id` this worker runs, if it runs one (through acpx: the
    /// turn then answers `cancelled`). `why` says what asked for it, in the log.
    async fn cancel_running_turn(&self, session_id: &str, why: &str) {
        let running = self
            .running_turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(session_id)
            .cloned();
        let Some((command, cwd)) = running else {
            return;
        };
        match self.acpx.cancel(&command, &cwd, session_id).await {
            Ok(cancelled) => {
                tracing::info!(session = %session_id, cancelled, why, "turn cancelled")
            }
            Err(e) => {
                tracing::warn!(session = %session_id, error = %e, why, "cancelling a turn failed")
            }
        }
    }

    /// The session `id` if it exists and belongs to `caller`; `not_found` otherwise.
    async fn owned_session(&self, caller: &Caller, id: &SessionId) -> Result<SessionRow> {
        match self
            .ledger
            .session(id.as_string())
            .await
            .map_err(Error::internal)?
        {
            Some(row) if row.app == caller.app => Ok(row),
            _ => Err(Error::not_found("no such session")),
        }
    }

    pub(super) fn agent_command(&self, row: &SessionRow) -> Result<AgentCommand> {
        AgentCommand::parse(&row.agent_command).map_err(Error::internal)
    }

    pub async fn create_session(
        &self,
        caller: &Caller,
        req: wire::CreateSession,
    ) -> Result<wire::Session> {
        let agent_name = req
            .agent
            .unwrap_or_else(|| self.settings.default_agent.clone());
        let command = self
            .settings
            .agents
            .get(&agent_name)
            .cloned()
            .ok_or_else(|| {
                Error::bad_request(format!(
                    "unknown agent {agent_name:?}; configured agents: {}",
                    self.settings
                        .agents
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        let attachments = self.attachments(&req.files)?;

        let id = SessionId::new();
        let cwd = self.settings.sessions_root.join(id.as_string());
        let pending: Vec<String> = attachments
            .iter()
            .map(|a| cwd.join(a.name.as_str()).to_string_lossy().into_owned())
            .collect();
        let row = SessionRow {
            session_id: id.as_string(),
            app: caller.app.clone(),
            agent: agent_name,
            agent_command: command.spec().to_string(),
            cwd: cwd.to_string_lossy().into_owned(),
            open: true,
            created_at: now(),
            last_turn_at: None,
            closed_at: None,
            turns: 0,
            pending_files: pending,
        };
        let created = self
            .ledger
            .create_session(
                row.clone(),
                self.settings.worker_id.clone(),
                self.settings.max_live_sessions,
            )
            .await
            .map_err(Error::internal)?;
        if let CreateOutcome::AtCapacity { open } = created {
            return Err(Error::at_capacity(format!(
                "{open} sessions are open; the limit is {}",
                self.settings.max_live_sessions
            )));
        }

        let started: Result<()> = async {
            tokio::fs::create_dir_all(&cwd)
                .await
                .map_err(Error::internal)?;
            files::write(&cwd, attachments)
                .await
                .map_err(Error::internal)?;
            let record = self
                .acpx
                .new_session(&command, &cwd, &row.session_id)
                .await?;
            if let Some(record) = record {
                self.ledger
                    .set_acpx_record_id(row.session_id.clone(), record)
                    .await
                    .map_err(Error::internal)?;
            }
            Ok(())
        }
        .await;
        let (outcome, error) = match &started {
            Ok(()) => ("ok".to_string(), None),
            Err(e) => (e.kind.code().to_string(), Some(e.message.clone())),
        };
        let finished = self
            .ledger
            .finish_create(row.session_id.clone(), outcome, error)
            .await;
        let started = match (started, finished) {
            (Err(err), _) => Err(err),
            (Ok(()), Ok(())) => Ok(()),
            (Ok(()), Err(e)) => {
                // The agent session exists but the ledger could not say so: undo it rather than
                // leave a session open that nothing recorded as made.
                tracing::error!(session = %row.session_id, error = %e, "could not record a create");
                if let Err(e) = self
                    .acpx
                    .close_session(&command, &cwd, &row.session_id)
                    .await
                {
                    tracing::warn!(session = %row.session_id, error = %e, "acpx close failed");
                }
                Err(Error::internal(e))
            }
        };
        if let Err(err) = started {
            // Nothing half-made stays behind: the session is closed with the reason.
            let detail = EventDetail {
                outcome: "create_failed".into(),
                error: Some(err.message.clone()),
                ..Default::default()
            };
            if let Err(e) = self
                .ledger
                .close_session(
                    row.session_id.clone(),
                    row.app.clone(),
                    SessionEvent::Close,
                    now(),
                    self.settings.worker_id.clone(),
                    detail,
                )
                .await
            {
                tracing::error!(session = %row.session_id, error = %e, "could not record a failed create");
            }
            let _ = tokio::fs::remove_dir_all(&cwd).await;
            tracing::warn!(session = %row.session_id, error = %err, "session create failed");
            return Err(err);
        }
        tracing::info!(session = %row.session_id, app = %row.app, agent = %row.agent, "session created");
        Ok(session_reply(row))
    }

    pub async fn get_session(
        &self,
        caller: &Caller,
        req: wire::SessionRef,
    ) -> Result<wire::Session> {
        let id = SessionId::parse(&req.session_id)?;
        Ok(session_reply(self.owned_session(caller, &id).await?))
    }

    pub async fn list_sessions(
        &self,
        caller: &Caller,
        _req: wire::Empty,
    ) -> Result<wire::SessionList> {
        let rows = self
            .ledger
            .sessions_of(caller.app.clone())
            .await
            .map_err(Error::internal)?;
        Ok(wire::SessionList {
            sessions: rows.into_iter().map(session_reply).collect(),
        })
    }

    /// After the ledger has closed a session: cancels the turn of it this worker is running
    /// (it answers `cancelled`), waits for it to end, then stops the agent. A session acpx fails
    /// to close is closed all the same; its agent process ends with acpx's idle TTL.
    async fn stop_session_agent(&self, row: &SessionRow) -> Result<()> {
        let command = self.agent_command(row)?;
        let cwd = Path::new(&row.cwd);
        self.cancel_running_turn(&row.session_id, "session closed")
            .await;
        // Turns queued behind it find the session closed; the agent stops once none runs here.
        let _idle = tokio::time::timeout(
            CLOSE_WAITS_FOR_TURN,
            self.session_locks.lock(&row.session_id),
        )
        .await
        .ok();
        if let Err(e) = self
            .acpx
            .close_session(&command, cwd, &row.session_id)
            .await
        {
            tracing::warn!(session = %row.session_id, error = %e, "acpx close failed");
        }
        Ok(())
    }

    pub async fn close_session(
        &self,
        caller: &Caller,
        req: wire::SessionRef,
    ) -> Result<wire::SessionClosed> {
        let id = SessionId::parse(&req.session_id)?;
        let row = self.owned_session(caller, &id).await?;
        let closed = |already_closed| wire::SessionClosed {
            session_id: id.as_string(),
            closed: true,
            already_closed,
        };
        if !row.open {
            return Ok(closed(true));
        }
        // The ledger first: from here on every new turn of the session is a conflict.
        let outcome = self
            .ledger
            .close_session(
                row.session_id.clone(),
                caller.app.clone(),
                SessionEvent::Close,
                now(),
                self.settings.worker_id.clone(),
                EventDetail {
                    outcome: "ok".into(),
                    ..Default::default()
                },
            )
            .await
            .map_err(Error::internal)?;
        match outcome {
            CloseOutcome::Closed => {}
            CloseOutcome::AlreadyClosed => return Ok(closed(true)),
            CloseOutcome::NotFound => return Err(Error::not_found("no such session")),
        }
        self.stop_session_agent(&row).await?;
        tracing::info!(session = %row.session_id, "session closed");
        Ok(closed(false))
    }

    pub async fn turn(&self, caller: &Caller, req: wire::TurnRequest) -> Result<wire::Turn> {
        let id = SessionId::parse(&req.session_id)?;
        let prompt = Prompt::parse(req.prompt, self.settings.max_prompt_bytes)?;
        let timeout = self.timeout_secs(req.timeout_secs)?;
        let attachments = self.attachments(&req.files)?;
        let row = self.owned_session(caller, &id).await?;
        if !row.open {
            return Err(Error::conflict("the session is closed"));
        }
        let command = self.agent_command(&row)?;

        // Waiting for the session's earlier turns and for a slot is part of the timeout, and
        // waiting for the session holds a place in the queue too.
        let received = Instant::now();
        let budget = std::time::Duration::from_secs(timeout);
        let (_session, _slot) = self
            .admit(budget, async {
                let session = match self.session_locks.try_lock(&row.session_id) {
                    Some(session) => session,
                    None => {
                        let _place = self.turns.queue_place()?;
                        tracing::debug!(session = %row.session_id, "turn waiting for the session's earlier turn");
                        self.session_locks.lock(&row.session_id).await
                    }
                };
                Ok((session, self.turns.acquire().await?))
            })
            .await?;

        let cwd = Path::new(&row.cwd);
        let written = files::write(cwd, attachments)
            .await
            .map_err(Error::internal)?;
        // The ledger starts the turn unless another worker is running one of this session;
        // then this one waits for it, within its timeout. (A ledger call is never abandoned
        // half-way: it could record a turn that nothing then runs.)
        let recorded = Recorded::of(prompt.as_str(), self.settings.ledger_keep_text);
        let mut logged = false;
        let (turn, event_id, mut listed) = loop {
            let begun = self
                .ledger
                .begin_turn(
                    row.session_id.clone(),
                    caller.app.clone(),
                    now(),
                    self.settings.worker_id.clone(),
                    recorded.clone(),
                    seconds_from_now(-self.dead_after_secs()),
                )
                .await
                .map_err(Error::internal)?;
            match begun {
                BeginTurn::Started {
                    turn,
                    event_id,
                    pending_files,
                } => break (turn, event_id, pending_files),
                BeginTurn::NotFound => return Err(Error::not_found("no such session")),
                BeginTurn::Closed => return Err(Error::conflict("the session is closed")),
                BeginTurn::Busy => {
                    if !logged {
                        tracing::debug!(session = %row.session_id, "turn waiting for another worker's turn of the session");
                        logged = true;
                    }
                    self.pause_before_retry(OTHER_WORKER_POLL, received, budget)
                        .await?;
                }
            }
        };
        for p in written {
            let p = p.to_string_lossy().into_owned();
            if !listed.contains(&p) {
                listed.push(p);
            }
        }
        let text = files::with_header(&listed, prompt.as_str());

        let started = Instant::now();
        let timeout_d = budget.saturating_sub(received.elapsed());
        let _running = RunningTurn::register(self, &row.session_id, &command, cwd);
        let mut result = self
            .acpx
            .prompt(&command, cwd, &row.session_id, &text, timeout_d)
            .await;
        if result == Err(AcpxError::NoSession) {
            // acpx lost its record (its state directory was wiped): bring it back and retry.
            tracing::warn!(session = %row.session_id, "acpx had no record of the session; re-creating it");
            result = match self
                .acpx
                .ensure_session(&command, cwd, &row.session_id)
                .await
            {
                Ok(()) => {
                    self.acpx
                        .prompt(&command, cwd, &row.session_id, &text, timeout_d)
                        .await
                }
                Err(e) => Err(e),
            };
        }
        let duration_ms = started.elapsed().as_millis() as u64;
        // Cancelled because the worker is stopping: the caller gets what there is (a turn whose
        // stop reason says so), the ledger says interrupted.
        let interrupted = self.stopping.is_cancelled()
            && !matches!(&result, Ok(out) if out.stop_reason != "cancelled");
        let result = result.map_err(Error::from);
        let detail = match &result {
            _ if interrupted => EventDetail {
                outcome: "interrupted".into(),
                turn: Some(turn),
                stop_reason: result.as_ref().ok().map(|out| out.stop_reason.clone()),
                duration_ms: Some(duration_ms),
                output: result
                    .as_ref()
                    .ok()
                    .map(|out| Recorded::of(&out.output, self.settings.ledger_keep_text)),
                error: Some(SHUT_DOWN_RUNNING.into()),
                ..Default::default()
            },
            Ok(out) => EventDetail {
                outcome: "ok".into(),
                turn: Some(turn),
                stop_reason: Some(out.stop_reason.clone()),
                duration_ms: Some(duration_ms),
                output: Some(Recorded::of(&out.output, self.settings.ledger_keep_text)),
                ..Default::default()
            },
            Err(err) => EventDetail {
                outcome: err.kind.code().to_string(),
                turn: Some(turn),
                duration_ms: Some(duration_ms),
                error: Some(err.message.clone()),
                ..Default::default()
            },
        };
        self.ledger
            .finish_turn(row.session_id.clone(), event_id, now(), detail)
            .await
            .map_err(Error::internal)?;
        let result = match result {
            Err(_) if interrupted => Err(Error::at_capacity(SHUT_DOWN_RUNNING)),
            other => other,
        };
        match result {
            Ok(out) => Ok(wire::Turn {
                session_id: row.session_id,
                turn,
                output: out.output,
                stop_reason: out.stop_reason,
                duration_ms,
            }),
            Err(err) => {
                if err.kind != ErrorKind::Timeout {
                    tracing::warn!(session = %row.session_id, turn, error = %err, "turn failed");
                } else {
                    tracing::info!(session = %row.session_id, turn, "turn timed out");
                }
                Err(err)
            }
        }
    }
}
